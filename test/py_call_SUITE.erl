%% The synchronous API: py:call/3,4,5, py:eval/1,2, py:exec/1, the interpreter set-up,
%% timeouts and where Python runs.
-module(py_call_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [call_3, call_4_kwargs_with_atom_and_binary_keys, call_5_with_proplist_opts,
     dotted_module_and_function_path, binary_names,
     eval_1, eval_2_locals, exec_then_eval_share_globals, iolist_code,
     {group, extension_modules},
     app_env_python_path_is_prepended, pythonpath_is_honoured,
     python_runs_on_the_loop_thread, default_loop_is_supervised,
     timeout_returns_and_interrupts, late_result_never_reaches_the_mailbox,
     queued_request_of_timed_out_caller_is_skipped,
     overloaded_queue_answers_overloaded, callback_ids_are_unique_and_increasing,
     call_before_start_is_an_error].

groups() ->
    [{extension_modules, [parallel],
      [import__json, import__asyncio, import__socket, import_select, import_math, import_ssl]}].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(pybeam),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    %% Every case leaves the default loop able to serve.
    {ok, 4.0} = py:call(math, sqrt, [16.0]),
    ok.

call_3(_Config) ->
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16.0])),
    ?assertEqual({ok, 3}, py:call(builtins, len, [[a, b, c]])),
    ?assertEqual({ok, <<"HELLO">>}, py:call(builtins, 'str.upper', [<<"hello">>])).

call_4_kwargs_with_atom_and_binary_keys(_Config) ->
    ?assertEqual({ok, 255}, py:call(builtins, int, [<<"ff">>], #{base => 16})),
    ?assertEqual({ok, 255}, py:call(builtins, int, [<<"ff">>], #{<<"base">> => 16})),
    ?assertEqual({ok, #{<<"a">> => 1, <<"b">> => 2}},
                 py:call(builtins, dict, [], #{a => 1, <<"b">> => 2})),
    %% One name given both as an atom and as a binary is a Python TypeError.
    ?assertMatch({error, {python, <<"TypeError">>, <<"keyword argument 'a' given twice">>, _}},
                 py:call(builtins, dict, [], #{a => 1, <<"a">> => 2})).

call_5_with_proplist_opts(_Config) ->
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4.0], #{}, [{timeout, 5000}])),
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4.0], #{}, #{timeout => infinity})).

dotted_module_and_function_path(_Config) ->
    ?assertEqual({ok, <<"a/b">>}, py:call('os.path', join, [<<"a">>, <<"b">>])),
    ?assertEqual({ok, 3}, py:call(collections, 'Counter.__len__', [#{a => 1, b => 2, c => 3}])).

binary_names(_Config) ->
    ?assertEqual({ok, 4.0}, py:call(<<"math">>, <<"sqrt">>, [16.0])),
    ?assertEqual({ok, <<"a/b">>}, py:call(<<"os.path">>, <<"join">>, [<<"a">>, <<"b">>])).

eval_1(_Config) ->
    ?assertEqual({ok, 3}, py:eval(<<"1 + 2">>)),
    ?assertEqual({ok, [0, 1, 4]}, py:eval("[i * i for i in range(3)]")).

eval_2_locals(_Config) ->
    ?assertEqual({ok, 42}, py:eval(<<"x * y">>, #{x => 6, <<"y">> => 7})),
    %% Locals do not leak into the loop's globals.
    ?assertMatch({error, {python, <<"NameError">>, <<"name 'x' is not defined">>, _}},
                 py:eval(<<"x">>)).

exec_then_eval_share_globals(_Config) ->
    ?assertEqual(ok, py:exec(<<"def double(n):\n    return 2 * n\nshared = 21">>)),
    ?assertEqual({ok, 42}, py:eval(<<"double(shared)">>)).

iolist_code(_Config) ->
    ?assertEqual({ok, 6}, py:eval([<<"1 + ">>, "2", [<<" + 3">>]])),
    ?assertEqual(ok, py:exec(["iolist_ok", <<" = True">>])),
    ?assertEqual({ok, true}, py:eval(<<"iolist_ok">>)).

%% Extension modules need libpython in the global symbol scope; `import json' alone would
%% hide a failure by falling back to pure Python, so the C modules are imported directly.
import__json(_Config) -> assert_imports(<<"_json">>).
import__asyncio(_Config) -> assert_imports(<<"_asyncio">>).
import__socket(_Config) -> assert_imports(<<"_socket">>).
import_select(_Config) -> assert_imports(<<"select">>).
import_math(_Config) -> assert_imports(<<"math">>).
import_ssl(_Config) -> assert_imports(<<"ssl">>).

assert_imports(Module) ->
    Code = <<"__import__('importlib').import_module(m).__name__">>,
    ?assertEqual({ok, Module}, py:eval(Code, #{m => Module})).

app_env_python_path_is_prepended(Config) ->
    Dir = filename:join(?config(priv_dir, Config), "app_env_path"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = file:write_file(filename:join(Dir, "pybeam_app_env_probe.py"), <<"VALUE = 'from app env'\n">>),
    with_app_env(python_path, [Dir], fun() ->
        ok = application:stop(pybeam),
        {ok, _} = application:ensure_all_started(pybeam),
        {ok, Path} = py:eval(<<"__import__('sys').path">>),
        %% priv/python first, then the configured directories, then Python's own.
        ?assertEqual(list_to_binary(Dir), lists:nth(2, Path)),
        ?assertEqual({ok, <<"from app env">>}, py:call(pybeam_app_env_probe, 'VALUE.__str__', []))
    end).

pythonpath_is_honoured(Config) ->
    %% PYTHONPATH is read when the interpreter starts, once per OS process: use a peer node.
    Dir = filename:join(?config(priv_dir, Config), "pythonpath_dir"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    ok = file:write_file(filename:join(Dir, "pybeam_env_probe.py"), <<"VALUE = 7\n">>),
    {ok, Peer, _Node} = start_peer([{"PYTHONPATH", Dir}]),
    try
        {ok, _} = peer:call(Peer, application, ensure_all_started, [pybeam]),
        ?assertEqual({ok, 7}, peer:call(Peer, py, eval,
                                        [<<"__import__('pybeam_env_probe').VALUE">>]))
    after
        peer:stop(Peer)
    end.

python_runs_on_the_loop_thread(_Config) ->
    %% The OS thread running the Python code is the loop's own thread, not a BEAM
    %% scheduler (normal or dirty).
    {ok, Tid} = py:eval(<<"__import__('threading').get_native_id()">>),
    {ok, Comm} = file:read_file(io_lib:format("/proc/self/task/~b/comm", [Tid])),
    ?assertEqual(<<"pybeam-loop-1\n">>, Comm).

default_loop_is_supervised(_Config) ->
    Children = supervisor:which_children(pybeam_sup),
    {value, {_, EventProc, worker, [py_event_proc]}} = lists:keysearch({default_loop, 1}, 1, Children),
    ?assert(is_pid(EventProc)),
    ?assertMatch([{_Loop, EventProc}], py_loops:default_loops()).

timeout_returns_and_interrupts(_Config) ->
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, timeout}, py:call(builtins, exec, [<<"while True: pass">>, #{}], #{},
                                           #{timeout => 200})),
    Waited = erlang:monotonic_time(millisecond) - T0,
    ?assert(Waited >= 200 andalso Waited < 1000),
    %% The loop was freed by the interruption, so the next call is prompt.
    T1 = erlang:monotonic_time(millisecond),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16.0])),
    ?assert(erlang:monotonic_time(millisecond) - T1 < 1000),
    ?assertMatch(#{running := 0}, info()).

late_result_never_reaches_the_mailbox(_Config) ->
    %% time.sleep cannot be interrupted while it sleeps: the result is produced after the
    %% caller gave up, and must be dropped.
    ?assertEqual({error, timeout}, py:call(time, sleep, [0.3], #{}, #{timeout => 50})),
    %% The loop thread runs requests in order and its results travel in order, so once
    %% the next call's answer is here, the late result has been routed (or dropped).
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4.0])),
    ?assertEqual({messages, []}, process_info(self(), messages)).

queued_request_of_timed_out_caller_is_skipped(_Config) ->
    #{skipped := Skipped0} = info(),
    %% The blocker says when its Python code runs, so that the next request is surely
    %% queued behind it, however slowly this machine runs the test.
    Self = self(),
    Blocker = spawn(fun() ->
                            py:call(builtins, exec,
                                    [<<"import erlang, time\n"
                                       "erlang.send(me, erlang.Atom('running'))\n"
                                       "time.sleep(0.3)">>, #{<<"me">> => Self}])
                    end),
    receive running -> ok after 5000 -> ct:fail(blocker_never_ran) end,
    ?assertEqual({error, timeout},
                 py:call(builtins, exec, [<<"raise RuntimeError('must not run')">>, #{}], #{},
                         #{timeout => 20})),
    py_test_util:wait_until(fun() -> maps:get(skipped, info()) > Skipped0 end, 5000),
    ?assertMatch(#{skipped := S} when S =:= Skipped0 + 1, info()),
    exit(Blocker, kill).

overloaded_queue_answers_overloaded(_Config) ->
    {ok, EventProc} = py_event_proc:start(#{capacity => 2}),
    Loop = py_event_proc:handle(EventProc),
    Self = self(),
    Busy = fun(Tag) -> spawn(fun() -> Self ! {Tag, py:call(time, sleep, [0.3], #{}, #{loop => Loop})} end) end,
    Stats = fun() -> py_event_proc:info(EventProc) end,
    Busy(running),
    py_test_util:wait_until(fun() -> maps:get(running, Stats()) =:= 1 end),
    Busy(q1),
    Busy(q2),
    py_test_util:wait_until(fun() -> maps:get(queued, Stats()) =:= 2 end),
    ?assertEqual({error, overloaded}, py:call(math, sqrt, [1.0], #{}, #{loop => Loop})),
    [receive {Tag, R} -> ?assertEqual({ok, none}, R) after 5000 -> ct:fail({no_reply, Tag}) end
     || Tag <- [running, q1, q2]],
    ok = py_event_proc:stop(EventProc).

callback_ids_are_unique_and_increasing(_Config) ->
    Self = self(),
    Pids = [spawn(fun() -> Self ! {ids, [py_callback_id:next() || _ <- lists:seq(1, 1000)]} end)
            || _ <- lists:seq(1, 20)],
    Lists = [receive {ids, L} -> L end || _ <- Pids],
    All = lists:append(Lists),
    ?assertEqual(20000, length(lists:usort(All))),
    [?assertEqual(L, lists:sort(L)) || L <- Lists],
    ?assert(lists:min(All) > 0).

call_before_start_is_an_error(_Config) ->
    ok = application:stop(pybeam),
    try
        ?assertEqual({error, not_started}, py:call(math, sqrt, [1.0]))
    after
        {ok, _} = application:ensure_all_started(pybeam)
    end.

%% Helpers

info() ->
    [{_Loop, EventProc}] = py_loops:default_loops(),
    py_event_proc:info(EventProc).

with_app_env(Key, Value, Fun) ->
    Old = application:get_env(pybeam, Key),
    ok = application:set_env(pybeam, Key, Value),
    try
        Fun()
    after
        case Old of
            {ok, V} -> application:set_env(pybeam, Key, V);
            undefined -> application:unset_env(pybeam, Key)
        end
    end.

start_peer(Env) ->
    Paths = lists:append([["-pa", D] || D <- code:get_path(), filelib:is_dir(D)]),
    {ok, Peer, Node} = peer:start_link(#{name => peer:random_name(),
                                         connection => standard_io,
                                         args => Paths,
                                         env => Env}),
    {ok, Peer, Node}.
