#!/usr/bin/env escript
%%! -noshell
%% The Erlang half of `make demo': real calls into the embedded Python.
main(_) ->
    Root = filename:dirname(filename:dirname(filename:absname(escript:script_name()))),
    true = code:add_path(filename:join(Root, "_build/default/lib/pybeam/ebin")),
    {ok, _} = application:ensure_all_started(pybeam),
    #{version := Version} = py_nif:python_info(),
    io:format("Erlang demo, embedded Python ~s~n", [hd(string:split(Version, " "))]),

    show("py:call(math, sqrt, [16.0])", py:call(math, sqrt, [16.0])),
    show("py:call('os.path', join, [<<\"usr\">>, <<\"lib\">>])",
         py:call('os.path', join, [<<"usr">>, <<"lib">>])),
    show("py:call(builtins, int, [<<\"ff\">>], #{base => 16})",
         py:call(builtins, int, [<<"ff">>], #{base => 16})),
    show("py:call(json, dumps, [#{name => <<\"pybeam\">>, tags => [erlang, python]}])",
         py:call(json, dumps, [#{name => <<"pybeam">>, tags => [erlang, python]}])),
    show("py:exec(<<\"def fib(n): ...\">>)",
         py:exec(<<"def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n">>)),
    show("py:eval(<<\"fib(100)\">>)", py:eval(<<"fib(100)">>)),
    show("py:eval(<<\"sorted(xs, reverse=True)\">>, #{xs => [3, 1, 2]})",
         py:eval(<<"sorted(xs, reverse=True)">>, #{xs => [3, 1, 2]})),
    {error, {python, Type, Msg, _Traceback}} = py:eval(<<"1 / 0">>),
    show("py:eval(<<\"1 / 0\">>)", {error, {python, Type, Msg, '...'}}),

    io:format("~nAn event loop driven from Erlang (py_event_loop_v2)~n"),
    {ok, Loop, EP} = py_event_loop_v2:new(),
    _ = py_event_loop_v2:start_timer(EP, 20, 1),
    ok = py_event_loop_v2:call(Loop, EP, 2, math, gcd, [84, 36]),
    ok = py_event_loop_v2:async_call(Loop, EP, 3, asyncio, sleep, [0.01, <<"slept">>]),
    show("timer 1 (20 ms), call 2 (math.gcd), async call 3 (asyncio.sleep 10 ms): poll until all three",
         poll_all(EP, 3)),
    ok = py_event_loop_v2:destroy(Loop, EP),

    io:format("~nasyncio from Erlang~n"),
    %% examples/demo_tasks.py: `async def square_later(n)' sleeps 100 ms, returns n * n.
    {ok, _} = py:call(sys, 'path.insert', [0, list_to_binary(filename:join(Root, "examples"))]),
    {Us, Gathered} = timer:tc(fun() -> py:async_gather([{demo_tasks, square_later, [N]} || N <- lists:seq(1, 10)]) end),
    show(io_lib:format("py:async_gather of 10 x demo_tasks.square_later (each sleeps 100 ms; took ~b ms)",
                       [Us div 1000]),
         Gathered),
    Ref = py:async_call(asyncio, sleep, [0.01, done]),
    show("py:async_await(py:async_call(asyncio, sleep, [0.01, done]))", py:async_await(Ref)),
    ok = py:register_function(erlang_node, fun() -> node() end),
    show("py:eval(<<\"erlang.call('erlang_node')\">>)  % Python calling Erlang",
         py:eval(<<"__import__('erlang').call('erlang_node')">>)),
    ok.

poll_all(_EP, 0) ->
    [];
poll_all(EP, N) ->
    Events = py_event_loop_v2:poll(EP, 1000),
    Events ++ poll_all(EP, N - length(Events)).

show(Expr, Result) ->
    io:format("  ~s~n    -> ~tp~n", [Expr, Result]).
