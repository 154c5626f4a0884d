#!/usr/bin/env escript
%%! -noshell
%% Runs one module of CPython's test_asyncio on both loops, in a fresh node:
%%   escript test/conformance/run_module.escript test_events out.json
main([Module, Out]) ->
    Here = filename:dirname(filename:absname(escript:script_name())),
    Root = filename:dirname(filename:dirname(Here)),
    true = code:add_path(filename:join(Root, "_build/default/lib/pybeam/ebin")),
    ok = application:load(pybeam),
    ok = application:set_env(pybeam, python_path, [Here]),
    {ok, _} = application:ensure_all_started(pybeam),
    %% A loop of its own: the module runs for minutes and blocks the loop it runs on.
    {ok, Loop, EP} = py_event_loop_v2:new(),
    Result = py:call(pybeam_conformance, run_module,
                     [list_to_binary(Module), list_to_binary(filename:absname(Out))],
                     #{}, #{timeout => infinity, loop => {Loop, EP}}),
    case Result of
        {ok, N} ->
            io:format("~s: ~b tests~n", [Module, N]),
            halt(0);
        Error ->
            io:format("~s: ~p~n", [Module, Error]),
            halt(1)
    end.
