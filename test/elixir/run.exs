# Runs every *_test.exs here against the built application:
#   elixir -pa _build/default/lib/pybeam/ebin test/elixir/run.exs
ExUnit.start(seed: 0)
{:ok, _} = Application.ensure_all_started(:pybeam)

__DIR__
|> Path.join("*_test.exs")
|> Path.wildcard()
|> Enum.sort()
|> Enum.each(&Code.require_file/1)
