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
    ok.

show(Expr, Result) ->
    io:format("  ~s~n    -> ~tp~n", [Expr, Result]).
