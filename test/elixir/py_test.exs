defmodule PybeamPyTest do
  use ExUnit.Case, async: true

  test "calls a Python function" do
    assert {:ok, 4.0} = :py.call(:math, :sqrt, [16.0])
    assert {:ok, "a/b"} = :py.call(:"os.path", :join, ["a", "b"])
  end

  test "passes keyword arguments from a map" do
    assert {:ok, 255} = :py.call(:builtins, :int, ["ff"], %{base: 16})
  end

  test "evaluates with an Elixir map as locals" do
    assert {:ok, 42} = :py.eval("x * y", %{x: 6, y: 7})
    assert {:ok, %{"total" => 6}} = :py.eval("{'total': sum(xs)}", %{xs: [1, 2, 3]})
  end

  test "Elixir nil reaches Python as None" do
    assert {:ok, true} = :py.eval("v is None", %{v: nil})
  end

  test "executes statements" do
    assert :ok = :py.exec("elixir_side = 'set from Elixir'")
    assert {:ok, "set from Elixir"} = :py.eval("elixir_side")
  end

  test "a Python exception is an error tuple" do
    assert {:error, {:python, "ZeroDivisionError", "division by zero", traceback}} =
             :py.eval("1 / 0")

    assert traceback =~ "ZeroDivisionError"
  end

  test "bad arguments raise ArgumentError" do
    assert_raise ArgumentError, ~r/args must be a list, got: not_a_list/, fn ->
      :py.call(:math, :sqrt, :not_a_list)
    end
  end

  test "async_gather runs coroutines concurrently, results in order" do
    {micros, result} =
      :timer.tc(fn -> :py.async_gather(for n <- 1..20, do: {:asyncio, :sleep, [0.1, n]}) end)

    assert {:ok, Enum.to_list(1..20)} == result
    assert micros < 500_000
    assert {:messages, []} == Process.info(self(), :messages)
  end

  test "async_call and async_await" do
    ref = :py.async_call(:asyncio, :sleep, [0.01, "done"])
    assert {:ok, "done"} == :py.async_await(ref, 5000)
  end

  test "an Elixir function called from Python" do
    :ok = :py.register_function(:elixir_upcase, fn s -> String.upcase(s) end)
    assert {:ok, "HELLO"} == :py.eval("__import__('erlang').call('elixir_upcase', 'hello')")
    :ok = :py.unregister_function(:elixir_upcase)
  end

  test "a stream of a Python generator" do
    {:ok, ref} = :py.async_stream(:builtins, :range, [3])
    items = for _ <- 1..3, do: (receive do {:py_stream, ^ref, {:data, x}} -> x end)
    assert [0, 1, 2] == items
    assert_receive {:py_stream, ^ref, :done}, 5000
  end
end
