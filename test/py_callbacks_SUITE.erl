%% Python calling Erlang: erlang.call, erlang.async_call, erlang.send, registered functions,
%% errors, timeouts, re-entrancy and calls from Python threads.
-module(py_callbacks_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(H, callback_helpers).

all() ->
    [registered_funs_and_mfas, from_erlang_import, unregistered_and_unregister,
     erlang_exceptions_raise_erlang_error, unconvertible_answers_are_errors,
     a_callback_that_never_returns_times_out, runs_in_an_erlang_process,
     workers_are_reused_only_when_clean, idle_workers_end, a_killed_idle_worker_is_skipped,
     send_to_a_pid, send_to_dead_and_remote_pids,
     nested_reentrancy_ten_levels, async_nested_reentrancy_ten_levels,
     async_call_truly_suspends, loop_serves_others_while_awaiting_erlang,
     async_call_on_other_loops, sixteen_threads_get_their_own_answers,
     calls_from_an_executor, bad_registrations].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(pybeam),
    {ok, _} = py:call(sys, 'path.insert', [0, list_to_binary(?config(data_dir, Config))]),
    ok = py:register_function(ident, fun(A, B) -> {A, B} end),
    ok = py:register_function(add, fun(A, B) -> A + B end),
    ok = py:register_function(<<"lists.reverse">>, {lists, reverse}),
    ok = py:register_function(whoami, fun() -> self() end),
    Config.

end_per_suite(_Config) ->
    [py:unregister_function(N) || N <- [ident, add, <<"lists.reverse">>, whoami]],
    ok.

end_per_testcase(_Case, _Config) ->
    ?assertEqual({messages, []}, process_info(self(), messages)),
    ok.

registered_funs_and_mfas(_Config) ->
    ?assertEqual({ok, 5}, py:call(?H, call, [add, 2, 3])),
    ?assertEqual({ok, [3, 2, 1]}, py:call(?H, call, [<<"lists.reverse">>, [1, 2, 3]])),
    %% Terms round-trip through the call: pids, binaries, maps, big integers.
    Self = self(),
    ?assertEqual({ok, {Self, #{<<"k">> => [1.5, 1 bsl 70]}}},
                 py:call(?H, call, [ident, Self, #{<<"k">> => [1.5, 1 bsl 70]}])).

from_erlang_import(_Config) ->
    ?assertEqual({ok, 7}, py:call(?H, imported, [add, 3, 4])),
    ?assertEqual({ok, <<"ImportError">>}, py:call(?H, import_error, [no_such_function])).

unregistered_and_unregister(_Config) ->
    ?assertEqual({ok, [<<"erlang.Error">>, {unknown_function, <<"nothing_here">>}]},
                 py:call(?H, error_of, [nothing_here])),
    ok = py:register_function(temporary, fun() -> here end),
    ?assertEqual({ok, here}, py:call(?H, call, [temporary])),
    ok = py:unregister_function(temporary),
    ?assertEqual({ok, [<<"erlang.Error">>, {unknown_function, <<"temporary">>}]},
                 py:call(?H, error_of, [temporary])),
    ?assertEqual({ok, <<"ImportError">>}, py:call(?H, import_error, [temporary])).

erlang_exceptions_raise_erlang_error(_Config) ->
    ok = py:register_function(crash, fun(X) -> 1 / X end),
    ok = py:register_function(thrower, fun() -> throw(oops) end),
    ok = py:register_function(exiter, fun() -> exit(gone) end),
    ?assertEqual({ok, [<<"erlang.Error">>, {error, badarith}]}, py:call(?H, error_of, [crash, 0])),
    ?assertEqual({ok, [<<"erlang.Error">>, {throw, oops}]}, py:call(?H, error_of, [thrower])),
    ?assertEqual({ok, [<<"erlang.Error">>, {exit, gone}]}, py:call(?H, error_of, [exiter])),
    ?assertEqual({ok, [<<"erlang.Error">>, {badarity, <<"crash">>, 1, 2}]},
                 py:call(?H, error_of, [crash, 1, 2])),
    %% The message of the exception names the reason; its type is erlang.Error.
    {error, {python, <<"erlang.Error">>, Msg, _}} = py:call(?H, call, [crash, 0]),
    ?assertMatch({_, _}, binary:match(Msg, <<"badarith">>)).

unconvertible_answers_are_errors(_Config) ->
    ok = py:register_function(gives_fun, fun() -> fun() -> ok end end),
    ok = py:register_function(raises_port, fun() -> error({bad, hd(erlang:ports())}) end),
    {ok, [<<"erlang.Error">>, {unsupported_term, Printed}]} = py:call(?H, error_of, [gives_fun]),
    ?assertMatch({_, _}, binary:match(Printed, <<"#Fun">>)),
    {ok, [<<"erlang.Error">>, {unsupported_term, Printed2}]} = py:call(?H, error_of, [raises_port]),
    ?assertMatch({_, _}, binary:match(Printed2, <<"#Port">>)).

a_callback_that_never_returns_times_out(_Config) ->
    Self = self(),
    ok = py:register_function(hang, fun() -> Self ! {hanging, self()}, receive never -> ok end end),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({ok, [<<"erlang.Error">>, timeout]}, py:call(?H, error_of, [hang], #{timeout => 0.2})),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    ?assert(Elapsed >= 200 andalso Elapsed < 2000),
    Worker = receive {hanging, P} -> P after 1000 -> ct:fail(no_worker) end,
    %% The process that ran it was killed, not left behind.
    py_test_util:wait_until(fun() -> not is_process_alive(Worker) end),
    %% The loop goes on serving.
    ?assertEqual({ok, 3}, py:call(?H, call, [add, 1, 2])).

runs_in_an_erlang_process(_Config) ->
    {ok, Pid} = py:call(?H, call, [whoami]),
    ?assert(is_pid(Pid)),
    ?assertNotEqual(self(), Pid),
    ?assertNotEqual(undefined, process_info(Pid)).

%% A worker that answered waits for the next call, unless the function left state behind
%% (messages, process dictionary, links, trapped exits), which the next call must not see.
workers_are_reused_only_when_clean(_Config) ->
    {ok, Pids} = py:eval(<<"[__import__('erlang').call('whoami') for _ in range(200)]">>),
    %% A call can come before the last worker is back on the idle list, which starts
    %% another; a process per call would be 200.
    ?assert(length(lists:usort(Pids)) =< 10),
    Partner = spawn(fun() -> receive stop -> ok end end),
    Dirty = [{put, fun() -> put(k, v) end},
             {message, fun() -> self() ! junk end},
             {link, fun() -> link(Partner) end},
             {trap_exit, fun() -> process_flag(trap_exit, true) end}],
    lists:foreach(
        fun({Name, Spoil}) ->
            ok = py:register_function(Name, fun() -> Spoil(), self() end),
            {ok, Spoiled} = py:call(?H, call, [Name]),
            py_test_util:wait_until(fun() -> not is_process_alive(Spoiled) end),
            {ok, Next} = py:call(?H, call, [whoami]),
            ?assertNotEqual(Spoiled, Next),
            ok = py:unregister_function(Name)
        end, Dirty),
    Partner ! stop.

idle_workers_end(_Config) ->
    ok = application:set_env(pybeam, callback_worker_idle_ms, 100),
    try
        %% The worker that answers may be one started before the setting changed.
        {ok, Pids} = py:eval(<<"[__import__('erlang').call('whoami') for _ in range(3)]">>),
        py_test_util:wait_until(fun() -> not lists:any(fun is_process_alive/1, Pids) end),
        {ok, Next} = py:call(?H, call, [whoami]),
        ?assertNot(lists:member(Next, Pids))
    after
        application:unset_env(pybeam, callback_worker_idle_ms)
    end.

a_killed_idle_worker_is_skipped(_Config) ->
    {ok, Worker} = py:call(?H, call, [whoami]),
    py_test_util:wait_until(fun() -> process_info(Worker, status) =:= {status, waiting} end),
    %% The dispatcher takes a dead worker off the idle list when it sees it die; suspended,
    %% it cannot, and the next call finds the dead worker first: it must go elsewhere.
    ok = sys:suspend(py_callbacks),
    exit(Worker, kill),
    py_test_util:wait_until(fun() -> not is_process_alive(Worker) end),
    Self = self(),
    _ = spawn_link(fun() -> Self ! {answer, py:call(?H, call, [whoami])} end),
    timer:sleep(50),
    ok = sys:resume(py_callbacks),
    receive
        {answer, {ok, Next}} -> ?assertNotEqual(Worker, Next)
    after 5000 ->
        ct:fail(call_lost)
    end,
    %% Seen by the dispatcher: a worker killed while idle is simply gone.
    {ok, Worker2} = py:call(?H, call, [whoami]),
    py_test_util:wait_until(fun() -> process_info(Worker2, status) =:= {status, waiting} end),
    exit(Worker2, kill),
    py_test_util:wait_until(fun() -> not is_process_alive(Worker2) end),
    {ok, Next2} = py:call(?H, call, [whoami]),
    ?assertNotEqual(Worker2, Next2),
    ?assertEqual({ok, 3}, py:call(?H, call, [add, 1, 2])).

send_to_a_pid(_Config) ->
    ?assertEqual({ok, none}, py:call(?H, send, [self(), {hello, [1, 2], <<"x">>}])),
    receive Msg -> ?assertEqual({hello, [1, 2], <<"x">>}, Msg) after 1000 -> ct:fail(no_message) end.

send_to_dead_and_remote_pids(_Config) ->
    Dead = spawn(fun() -> ok end),
    py_test_util:wait_until(fun() -> not is_process_alive(Dead) end),
    ?assertEqual({ok, [<<"erlang.ProcessError">>, <<"no such process">>, true]},
                 py:call(?H, send_error, [Dead, hi])),
    Remote = remote_pid(),
    ?assertEqual({ok, [<<"erlang.ProcessError">>, <<"not a pid of this node">>, true]},
                 py:call(?H, send_error, [Remote, hi])),
    ?assertMatch({ok, [<<"TypeError">>, _]}, py:call(?H, send_error, [<<"not a pid">>, hi])),
    ?assertMatch({ok, [<<"TypeError">>, _]}, py:eval(<<"__import__('callback_helpers').send_error(p, object())">>,
                                                    #{p => self()})).

nested_reentrancy_ten_levels(_Config) ->
    %% Python -> Erlang -> Python (the same loop) -> Erlang ... ten levels deep.
    ok = py:register_function(reenter, fun(N) -> {ok, V} = py:call(?H, nest, [N]), V end),
    ?assertEqual({ok, 10}, py:call(?H, nest, [10])).

async_nested_reentrancy_ten_levels(_Config) ->
    ok = py:register_function(areenter,
                               fun(N) -> {ok, V} = py:async_await(py:async_call(?H, anest, [N])), V end),
    ?assertEqual({ok, 10}, py:async_await(py:async_call(?H, anest, [10]))).

async_call_truly_suspends(_Config) ->
    {ok, _} = py:eval(<<"__import__('callback_helpers').before_await.__setitem__(0, 0)">>),
    ok = py:register_function(slowly, fun(X) -> timer:sleep(50), X end),
    ?assertEqual({ok, [1, answer]}, py:async_await(py:async_call(?H, suspends, [slowly, answer]))).

loop_serves_others_while_awaiting_erlang(_Config) ->
    Self = self(),
    ok = py:register_function(gate, fun() -> Self ! {gate, self()}, receive open -> opened end end),
    Ref = py:async_call(?H, suspends, [gate]),
    Gate = receive {gate, P} -> P after 5000 -> ct:fail(not_called) end,
    %% The coroutine waits for Erlang; the loop thread is free for other work.
    {Us, Answer} = timer:tc(fun() -> py:call(operator, add, [1, 2]) end),
    ?assertEqual({ok, 3}, Answer),
    ?assert(Us < 100000),
    %% And its asyncio loop runs other tasks.
    ?assertEqual({ok, 4}, py:async_await(py:async_call(asyncio, sleep, [0.01, 4]), 1000)),
    Gate ! open,
    ?assertMatch({ok, [_, opened]}, py:async_await(Ref)).

async_call_on_other_loops(_Config) ->
    ?assertEqual({ok, 9}, py:call(?H, on_other_loop, [add, 4, 5])),
    ?assertEqual({ok, 11}, py:call(?H, on_asyncio_loop, [add, 5, 6])).

sixteen_threads_get_their_own_answers(_Config) ->
    {ok, [Wrong, Rate]} = py:call(?H, threads, [16, 10000], #{}, #{timeout => 300000}),
    ct:pal("16 Python threads x 10,000 erlang.call: ~b calls/s", [round(Rate)]),
    ?assertEqual([], Wrong).

calls_from_an_executor(_Config) ->
    ?assertEqual({ok, 12}, py:async_await(py:async_call(?H, in_executor, [add, 5, 7]))).

bad_registrations(_Config) ->
    ?assertError(badarg, py:register_function(1, fun() -> ok end)),
    ?assertError(badarg, py:register_function(<<>>, fun() -> ok end)),
    ?assertError(badarg, py:register_function(name, not_a_fun)),
    ?assertError(badarg, py:register_function(name, {lists, 1})),
    ?assertError(badarg, py:unregister_function("a string")),
    %% Bad arguments on the Python side are Python errors.
    ?assertMatch({error, {python, <<"TypeError">>, _, _}},
                 py:eval(<<"__import__('erlang').call('add', object(), 1)">>)),
    ?assertMatch({error, {python, <<"ValueError">>, _, _}},
                 py:eval(<<"__import__('erlang').call('add', 1, 2, timeout=-1)">>)).

%%% Helpers

%% A pid of another node, built from its external format.
remote_pid() ->
    Node = atom_to_binary('other@host'),
    binary_to_term(<<131, 88, 119, (byte_size(Node)), Node/binary, 0:32, 1:32, 1:32>>).

