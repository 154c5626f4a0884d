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
