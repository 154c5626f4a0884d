# The Elixir half of `make demo':
#   elixir -pa _build/default/lib/pybeam/ebin examples/demo.exs
{:ok, _} = Application.ensure_all_started(:pybeam)
%{version: version} = :py_nif.python_info()
IO.puts("Elixir demo, embedded Python #{version |> String.split(" ") |> hd()}")

show = fn expr, result -> IO.puts("  #{expr}\n    -> #{inspect(result)}") end

show.(~S|:py.call(:math, :factorial, [30])|, :py.call(:math, :factorial, [30]))
show.(~S|:py.call(:statistics, :mean, [[1, 2, 3, 4]])|, :py.call(:statistics, :mean, [[1, 2, 3, 4]]))
show.(~S|:py.eval("x * y", %{x: 6, y: 7})|, :py.eval("x * y", %{x: 6, y: 7}))

show.(
  ~S|:py.eval("{k: len(v) for k, v in d.items()}", %{d: %{"a" => "xyz", "b" => ""}})|,
  :py.eval("{k: len(v) for k, v in d.items()}", %{d: %{"a" => "xyz", "b" => ""}})
)

show.(~S|:py.exec("import re; pattern = re.compile(r'\d+')")|, :py.exec("import re; pattern = re.compile(r'\\d+')"))
show.(~S|:py.eval("pattern.findall(s)", %{s: "a1b22c333"})|, :py.eval("pattern.findall(s)", %{s: "a1b22c333"}))

{:error, {:python, type, message, _traceback}} = :py.call(:json, :loads, ["{bad json"])
show.(~S|:py.call(:json, :loads, ["{bad json"])|, {:error, {:python, type, message, :...}})

IO.puts("\nasyncio from Elixir")
# examples/demo_tasks.py: `async def square_later(n)` sleeps 100 ms, returns n * n.
{:ok, _} = :py.call(:sys, :"path.insert", [0, __DIR__])
{micros, gathered} = :timer.tc(fn -> :py.async_gather(for n <- 1..10, do: {:demo_tasks, :square_later, [n]}) end)
show.(~S|:py.async_gather(for n <- 1..10, do: {:demo_tasks, :square_later, [n]})| <> " (took #{div(micros, 1000)} ms)", gathered)
ref = :py.async_call(:asyncio, :sleep, [0.01, "awake"])
show.(~S|:py.async_await(:py.async_call(:asyncio, :sleep, [0.01, "awake"]))|, :py.async_await(ref))

IO.puts("\nAn event loop driven from Elixir")
{:ok, loop, ep} = :py_event_loop_v2.new()
_timer = :py_event_loop_v2.start_timer(ep, 10, 1)
:ok = :py_event_loop_v2.async_call(loop, ep, 2, :asyncio, :sleep, [0.02, "later"])
events = Enum.flat_map(1..2, fn _ -> :py_event_loop_v2.poll(ep, 1000) end)
show.("timer 1 (10 ms) and async call 2 (asyncio.sleep 20 ms), polled", events)
:ok = :py_event_loop_v2.destroy(loop, ep)
