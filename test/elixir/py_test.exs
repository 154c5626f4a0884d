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
end
