%% erlang.ErlangEventLoop, the asyncio loop driven by an event process: transports,
%% servers, TLS, child processes, executors, DNS, the loop's own API and the event
%% processes that Python-made loops own.
%%
%% Each scenario is a coroutine in test/py_asyncio_SUITE_data/aio_*.py. Most run twice:
%% with erlang.run inside a py:call (on the default loop's thread) and on a loop that a
%% Python threading.Thread makes itself; where the claim is "as asyncio does", also on
%% asyncio's own selector loop, and all must give the same exact result.
-module(py_asyncio_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(CALL_TIMEOUT, 20000).

all() ->
    [{group, network}, {group, tls}, {group, subprocess}, {group, executors},
     {group, loop_api}, {group, timers}, {group, fds}, {group, lifecycle}].

groups() ->
    [{network, [], [tcp_streams_echo, tcp_protocols_echo_reuse_port_backlog, unix_sockets_echo,
                    udp_datagram_echo, sock_recvfrom_waits_for_datagrams,
                    sock_connect_accept_sendall_recv_recv_into]},
     {tls, [], [tls_echo, start_tls_upgrades_a_plain_connection]},
     {subprocess, [], [subprocess_cat_echo, subprocess_exit_codes, subprocess_killed_by_signal,
                       subprocess_shell, subprocess_communicate_1mb]},
     {executors, [], [run_in_executor_default, run_in_executor_custom_default_executor,
                      shutdown_asyncgens_runs_finally, dns_getaddrinfo_getnameinfo]},
     {loop_api, [], [call_soon_threadsafe_wakes_an_idle_loop, exception_handler_api,
                     debug_mode_warns_of_slow_callbacks, signal_handlers_are_not_supported,
                     event_loop_policy_makes_erlang_loops, task_factory_and_create_future,
                     contextvars_reach_callbacks, context_copies_stay_out_of_the_collector,
                    releasing_a_callback_may_use_its_handle, releasing_timers_may_use_the_loop,
                    spent_handles_are_released_and_reused_only_when_unreachable,
                    a_waiting_loop_gives_spare_handles_back]},
     {timers, [], [timers_run_in_order_and_never_early, many_timers_never_early,
                   cancelled_timers_never_run, loop_time_is_monotonic]},
     {fds, [], [readers_and_writers_on_pipes_and_sockets, registering_a_closed_fd_fails]},
     {lifecycle, [], [run_stop_close, run_forever_in_another_thread,
                      erlang_run_from_a_coroutine_raises,
                      python_loop_owns_an_event_process, dropped_loop_ends_its_event_process,
                      closed_loops_are_freed_without_gc, loop_cycles_leak_nothing]}].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(pybeam),
    Dir = unicode:characters_to_binary(?config(data_dir, Config)),
    {ok, _} = py:call(sys, 'path.insert', [0, Dir]),
    [{python_dir, Dir} | Config].

end_per_suite(Config) ->
    _ = py:call(sys, 'path.remove', [?config(python_dir, Config)]),
    ok.

init_per_testcase(_Case, Config) ->
    [{loop_children, loop_children()} | Config].

%% Every case must leave the default loop serving, and every loop it made closed (with
%% its event process gone).
end_per_testcase(_Case, Config) ->
    Before = ?config(loop_children, Config),
    try
        {ok, 4.0} = py:call(math, sqrt, [16.0]),
        py_test_util:wait_equal(Before, fun loop_children/0, 5000),
        Before = loop_children(),
        ok
    catch
        Class:Reason -> {fail, {after_case, Class, Reason, loop_children(), Before}}
    end.

%%% Network

tcp_streams_echo(_Config) ->
    Size = 256 * 1024,
    on_both(aio_net, tcp_streams, [3, Size], [payload(I, Size) || I <- [0, 1, 2]]).

tcp_protocols_echo_reuse_port_backlog(_Config) ->
    Size = 256 * 1024,
    %% SO_REUSEPORT set, the listen backlog as asked (5), a second listener on the same port.
    on_both(aio_net, tcp_protocols, [3, Size], {1, 5, true, [payload(I, Size) || I <- [0, 1, 2]]}).

unix_sockets_echo(_Config) ->
    Size = 64 * 1024,
    on_both(aio_net, unix_sockets, [Size], {true, payload(0, Size), payload(1, Size)}).

udp_datagram_echo(_Config) ->
    N = 20,
    ByProtocol = [<<"echo:", (integer_to_binary(I))/binary, ":", (binary:part(pattern(), 0, I * 10))/binary>>
                  || I <- lists:seq(0, N - 1)],
    LowLevel = [{<<"echo:raw ", (integer_to_binary(I))/binary>>, true} || I <- lists:seq(0, N - 1)],
    on_both(aio_net, udp_echo, [N], {ByProtocol, LowLevel}).

sock_recvfrom_waits_for_datagrams(_Config) ->
    on_both(aio_net, sock_udp_waits, [], {true, <<"first">>, true, 6, <<"second">>}).

sock_connect_accept_sendall_recv_recv_into(_Config) ->
    %% 4 MB is more than the socket buffers hold: sock_sendall has to wait for the reader.
    Size = 4 * 1024 * 1024,
    on_both(aio_net, sock_tcp, [Size], {true, true, payload(0, Size), <<"reply">>, <<>>}).

%%% TLS

tls_echo(_Config) ->
    Size = 128 * 1024,
    Subject = {{{<<"commonName">>, <<"localhost">>}}},
    on_both(aio_tls, tls_echo, [2, Size],
            {[payload(0, Size), payload(1, Size)], [<<"TLSv1.3">>, <<"TLSv1.3">>], [Subject, Subject]}).

start_tls_upgrades_a_plain_connection(_Config) ->
    Size = 128 * 1024,
    on_both(aio_tls, start_tls, [Size],
            {<<"OK\n">>, payload(0, Size), <<"TLSv1.3">>, <<"STARTTLS\n">>, <<"TLSv1.3">>}).

%%% Child processes

subprocess_cat_echo(_Config) ->
    Lines = [<<"line ", (integer_to_binary(I))/binary, "\n">> || I <- lists:seq(1, 5)],
    on_both(aio_proc, cat_echo, [[{bytes, L} || L <- Lines]], {Lines, <<>>, <<>>, 0}).

subprocess_exit_codes(_Config) ->
    on_both(aio_proc, exit_codes, [],
            [{<<"out\n">>, <<"err\n">>, 3}, {<<>>, <<>>, 0}, {<<"x">>, <<>>, 200}]).

subprocess_killed_by_signal(_Config) ->
    %% kill(), send_signal(SIGTERM), and a child that signals itself (SIGUSR1 = 10).
    on_both(aio_proc, signals, [], [-9, -15, -10]).

subprocess_shell(_Config) ->
    on_both(aio_proc, shell, [], {<<"42\n">>, <<"oops\n">>, 5}).

subprocess_communicate_1mb(_Config) ->
    Data = binary:copy(pattern(), 4096),
    ?assertEqual(1024 * 1024, byte_size(Data)),
    on_both(aio_proc, communicate_large, [{bytes, Data}], {Data, <<"done\n">>, 0}).

%%% Executors, async generators, DNS

run_in_executor_default(_Config) ->
    %% Ran in another thread; shutdown waited for the running job; later jobs refused.
    on_both(aio_exec, default_executor, [],
            {true, 42, true, <<"Executor shutdown has been called">>}).

run_in_executor_custom_default_executor(_Config) ->
    on_both(aio_exec, custom_executor, [],
            {<<"asuite_0">>, [<<"asuite_0">>, <<"asuite_0">>, <<"asuite_0">>],
             <<"cannot schedule new futures after shutdown">>}).

shutdown_asyncgens_runs_finally(_Config) ->
    on_both(aio_exec, asyncgens, [],
            {1, [<<"a start">>, <<"b start">>, <<"b finally">>],
             [<<"a start">>, <<"b start">>, <<"b finally">>, <<"a finally">>]}).

dns_getaddrinfo_getnameinfo(_Config) ->
    %% Unrestricted lookups must agree with the blocking socket functions.
    on_both(aio_exec, dns, [],
            {[{2, 1, 6, <<>>, {<<"127.0.0.1">>, 80}}], true, {<<"127.0.0.1">>, <<"80">>}, true}).

%%% The loop's API

call_soon_threadsafe_wakes_an_idle_loop(_Config) ->
    %% Each round: the loop parks with nothing else to wait for (or only a timer a minute
    %% away); a thread's call_soon_threadsafe must wake it within 0.5 s. A lost wake-up is rescued by a pipe write after 2 s
    %% and comes back as false (or <<"rescued">>), not as a hang.
    on_both(aio_loop, threadsafe_wakeup, [6], lists:duplicate(6, true)).

exception_handler_api(_Config) ->
    Boom = {true, [<<"exception">>, <<"handle">>, <<"message">>],
            #{<<"exception">> => <<"ValueError('boom')">>,
              <<"handle">> => <<"<Handle exception_handler.<locals>.boom()">>,
              <<"message">> => <<"Exception in callback exception_handler.<locals>.boom()">>}},
    Custom = {true, [<<"detail">>, <<"message">>], #{<<"detail">> => 7, <<"message">> => <<"custom">>}},
    Lost = {true, [<<"exception">>, <<"future">>, <<"message">>],
            #{<<"exception">> => <<"KeyError('lost')">>, <<"future">> => <<"Future">>,
              <<"message">> => <<"Future exception was never retrieved">>}},
    on_all(aio_loop, exception_handler, [],
           #{<<"initial">> => none,
             <<"installed">> => true,
             <<"seen">> => [Boom, Custom, Lost],
             <<"reset">> => none,
             <<"logged">> => [{<<"ERROR">>, <<"to the default">>, true},
                              {<<"ERROR">>, <<"called directly">>, false}],
             <<"refused">> => <<"A callable object or None is expected, got 'not callable'">>,
             <<"broken">> => [{<<"ERROR">>, <<"Unhandled error in exception handler\n"
                                             "context: {'message': 'to a broken handler'}">>}]}).

debug_mode_warns_of_slow_callbacks(_Config) ->
    %% Paths, line numbers and the duration are normalised; the duration is checked
    %% (0.1 s <= took < 1 s) in Python.
    on_all(aio_loop, slow_callback, [],
           {true, 0.05,
            [<<"Executing <Handle slow_callback.<locals>.blocker() at FILE created at FILE>"
               " took N seconds">>],
            true,
            [<<"exception">>, <<"handle">>, <<"message">>, <<"source_traceback">>]}).

signal_handlers_are_not_supported(_Config) ->
    on_both(aio_loop, signals, [], {<<"NotImplementedError">>, <<"ErlangEventLoop">>, false}).

event_loop_policy_makes_erlang_loops(_Config) ->
    Expected = {<<"ErlangEventLoop">>, <<"ErlangEventLoop">>, true, <<"_UnixDefaultEventLoopPolicy">>},
    ?assertEqual({ok, Expected}, py:call(aio_lifecycle, policy, [])),
    ?assertEqual({ok, Expected}, py:call(aio_suite, call_in_thread, [aio_lifecycle, policy])).

task_factory_and_create_future(_Config) ->
    on_all(aio_loop, task_factory, [],
           #{<<"initial">> => none,
             <<"installed">> => true,
             <<"results">> => [1, 2, 3],
             <<"made">> => [<<"task0">>, <<"task1">>, <<"task2">>],
             <<"reset">> => none,
             <<"made_after_reset">> => 3,
             <<"refused">> => <<"task factory must be a callable or None">>,
             <<"future">> => [true, true, <<"set by callback">>]}).

context_copies_stay_out_of_the_collector(_Config) ->
    on_both(aio_loop, context_copies, [],
            #{<<"tracked_while_queued">> => 0, <<"escaped_tracked">> => true,
              <<"same_object">> => true, <<"ran_in_it">> => true,
              <<"cycle_collected">> => true}).

%% A callback released on cancel runs Python code (its __del__) that uses the handle:
%% no deadlock, no error (the handle's state is not borrowed while it is released).
releasing_a_callback_may_use_its_handle(_Config) ->
    on_all(aio_loop, reentrant_release, [],
           #{<<"ran">> => false, <<"repr">> => true, <<"callback_after_release">> => none,
             <<"cancelled">> => true}).

%% Timer handles released from the heap (swept when cancelled, cleared on close) may run
%% Python code that uses the loop's timers: no deadlock.
releasing_timers_may_use_the_loop(_Config) ->
    on_all(aio_loop, reentrant_timer_release, [],
           #{<<"released_by_sweep">> => 200, <<"heap_seen_while_closing">> => [0]}).

%% The loop reuses spent handles (see SpareHandles in handle.rs): what a spent handle held
%% is released at once, as when a handle is freed, and a handle that is still held or
%% weakly referenced is never reused.
spent_handles_are_released_and_reused_only_when_unreachable(_Config) ->
    on_all(aio_loop, spent_handles, [],
           #{<<"ran_args_released">> => true, <<"skipped_args_released">> => true,
             <<"held_handle_intact">> => {true, {1}, false},
             <<"held_handle_not_reused">> => true,
             <<"weakly_referenced_handle_freed">> => true}).

%% The 20,000 handles spent by the busy loop are kept up to the bound (16,384); once the
%% loop waits, at most 64 are left.
a_waiting_loop_gives_spare_handles_back(_Config) ->
    on_both(aio_loop, spare_handles, [], #{<<"busy">> => 16384, <<"after_wait_at_most_64">> => true}).

contextvars_reach_callbacks(_Config) ->
    on_all(aio_loop, contexts, [],
           #{<<"seen">> => #{<<"call_soon">> => <<"outer">>,
                             <<"explicit">> => <<"explicit">>,
                             <<"call_later">> => <<"outer">>,
                             <<"call_at">> => <<"outer">>,
                             %% The calling thread's context, which has no value.
                             <<"threadsafe">> => <<"unset">>,
                             <<"threadsafe_explicit">> => <<"explicit">>,
                             <<"changed">> => <<"changed in a callback">>,
                             <<"after_change">> => <<"outer">>,
                             <<"task">> => <<"outer">>},
             <<"outer_after">> => <<"outer">>,
             <<"explicit_after">> => <<"explicit">>}).

%%% Timers

timers_run_in_order_and_never_early(_Config) ->
    %% Delays [0.05, 0.01, 0.03, 0.0, 0.02, 0.04, 0.01]; no timer ran before its when().
    on_all(aio_loop, timer_order, [], {[3, 1, 6, 4, 2, 5, 0], []}).

many_timers_never_early(_Config) ->
    on_all(aio_loop, many_timers, [300], {true, [], 300}).

cancelled_timers_never_run(_Config) ->
    N = 300,
    on_all(aio_loop, cancelled_timers, [N], {[I || I <- lists:seq(0, N - 1), I rem 3 =:= 0], true}).

loop_time_is_monotonic(_Config) ->
    on_both(aio_loop, clock, [10000], {true, true, true, true}).

%%% Fd callbacks

readers_and_writers_on_pipes_and_sockets(_Config) ->
    on_all(aio_loop, fd_callbacks, [],
           #{<<"pipe_reads">> => [<<"a">>, <<"b">>, <<"c">>, <<"d">>, <<"e">>],
             <<"removed">> => true,
             <<"removed_again">> => false,
             <<"left_in_pipe">> => <<"f">>,
             <<"replaced">> => [<<"second">>],
             <<"writer_removed">> => true,
             <<"writer_removed_again">> => false,
             <<"via_writer">> => <<"via writer">>,
             <<"socketpair">> => <<"ping">>,
             <<"still_registered">> => []}).

registering_a_closed_fd_fails(_Config) ->
    Bad = {<<"OSError">>, <<"[Errno 9] Bad file descriptor">>},
    ClosedSocket = {<<"ValueError">>, <<"Invalid file descriptor: -1">>},
    NotPollable = {<<"PermissionError">>, <<"[Errno 1] Operation not permitted">>},
    Expected = [Bad, ClosedSocket, Bad, ClosedSocket, false, false, NotPollable, NotPollable],
    [?assertEqual({ok, Expected}, Result)
     || Which <- [erlang, default],
        Result <- [py:call(aio_loop, closed_fds, [Which]),
                   py:call(aio_suite, call_in_thread, [aio_loop, closed_fds, Which])]].

%%% Lifecycle

run_stop_close(_Config) ->
    Expected = #{<<"new">> => [false, false],
                 <<"inside">> => [true, true, <<"Cannot close a running event loop">>,
                                  <<"This event loop is already running">>,
                                  <<"This event loop is already running">>, false],
                 <<"after_complete">> => [false, false],
                 <<"stopped">> => [1, 2],
                 <<"stop_first">> => [1, 2, 3],
                 <<"timer_stop">> => [<<"timer">>],
                 <<"closed">> => [false, true],
                 <<"after_close">> => lists:duplicate(5, <<"Event loop is closed">>)},
    [?assertEqual({ok, Expected}, Result)
     || Which <- [erlang, default],
        Result <- [py:call(aio_lifecycle, lifecycle, [Which]),
                   py:call(aio_suite, call_in_thread, [aio_lifecycle, lifecycle, Which])]].

run_forever_in_another_thread(_Config) ->
    %% Driven from the calling thread with run_coroutine_threadsafe, then stopped with
    %% call_soon_threadsafe(loop.stop).
    Expected = [true, [{0, true}, {2, true}, {4, true}], <<"Cannot close a running event loop">>,
                [false, false], true],
    [?assertEqual({ok, Expected}, Result)
     || Which <- [erlang, default],
        Result <- [py:call(aio_lifecycle, run_forever_in_another_thread, [Which]),
                   py:call(aio_suite, call_in_thread,
                           [aio_lifecycle, run_forever_in_another_thread, Which])]].

erlang_run_from_a_coroutine_raises(_Config) ->
    on_both(aio_lifecycle, nested_run, [],
            {<<"ErlangEventLoop">>, <<"erlang.run() cannot be called from a running event loop">>}).

python_loop_owns_an_event_process(_Config) ->
    Before = loop_pids(),
    ?assertEqual({ok, 1}, py:call(aio_lifecycle, open_loops, [1])),
    [One] = loop_pids() -- Before,
    ?assertEqual({ok, 3}, py:call(aio_lifecycle, open_loops, [2])),
    Three = loop_pids() -- Before,
    ?assertEqual(3, length(Three)),
    ?assert(lists:member(One, Three)),
    %% They are event processes, not the default loops'.
    Defaults = [Pid || {_, Pid, _, _} <- supervisor:which_children(pybeam_sup)],
    ?assertEqual([], [P || P <- Three, lists:member(P, Defaults)]),
    Mons = [erlang:monitor(process, P) || P <- Three],
    ?assertEqual({ok, [true, true, true]}, py:call(aio_lifecycle, close_loops, [])),
    [receive {'DOWN', M, process, _, _} -> ok after 5000 -> ct:fail(event_process_outlived_loop) end
     || M <- Mons],
    ?assertEqual(Before, loop_pids()).

dropped_loop_ends_its_event_process(_Config) ->
    Before = loop_pids(),
    ?assertEqual({ok, 2}, py:call(aio_lifecycle, open_loops, [2])),
    Mons = [erlang:monitor(process, P) || P <- loop_pids() -- Before],
    ?assertEqual(2, length(Mons)),
    ?assertEqual({ok, 2}, py:call(aio_lifecycle, drop_loops, [])),
    [receive {'DOWN', M, process, _, _} -> ok after 5000 -> ct:fail(event_process_outlived_loop) end
     || M <- Mons],
    ?assertEqual(Before, loop_pids()).

closed_loops_are_freed_without_gc(_Config) ->
    %% As with asyncio's own loops, reference counting alone frees a closed loop.
    ?assertEqual({ok, 0}, py:call(aio_lifecycle, survivors_without_gc, [<<"asyncio">>, 20])),
    ?assertEqual({ok, 0}, py:call(aio_lifecycle, survivors_without_gc, [<<"erlang">>, 20])).

loop_cycles_leak_nothing(Config) ->
    %% Whatever the first loops open for good (lazy imports) is in the baseline, so what
    %% is left to compare is what loops leak. A closed loop's event process ends just
    %% after close() returns, so the baseline waits for the last one.
    Children0 = ?config(loop_children, Config),
    {ok, 10} = py:call(aio_lifecycle, cycles, [10]),
    py_test_util:wait_equal(Children0, fun loop_children/0, 5000),
    Fds0 = py_test_util:open_fds(),
    ?assertEqual({ok, 200}, py:call(aio_lifecycle, cycles, [200], #{}, #{timeout => ?CALL_TIMEOUT})),
    ?assertEqual({ok, 100}, py:call(aio_suite, call_in_thread, [aio_lifecycle, cycles, 100],
                                    #{}, #{timeout => ?CALL_TIMEOUT})),
    py_test_util:wait_equal(Children0, fun loop_children/0, 5000),
    ?assertEqual(Children0, loop_children()),
    py_test_util:wait_equal(Fds0, fun py_test_util:open_fds/0, 5000),
    ?assertEqual(Fds0, py_test_util:open_fds()).

%%% Helpers

%% Same exact result with erlang.run in a py:call and on a loop made in a Python thread.
on_both(Module, Scenario, Args, Expected) ->
    ?assertEqual({ok, Expected}, scenario(run, Module, Scenario, Args)),
    ?assertEqual({ok, Expected}, scenario(in_thread, Module, Scenario, Args)).

%% ... and on asyncio's own selector loop.
on_all(Module, Scenario, Args, Expected) ->
    ?assertEqual({ok, Expected}, scenario(on_default_loop, Module, Scenario, Args)),
    on_both(Module, Scenario, Args, Expected).

scenario(How, Module, Scenario, Args) ->
    py:call(aio_suite, How, [Module, Scenario | Args], #{}, #{timeout => ?CALL_TIMEOUT}).

pattern() ->
    list_to_binary(lists:seq(0, 255)).

%% aio_net.payload(I, Size)
payload(I, Size) ->
    <<(integer_to_binary(I))/binary, ":", (binary:copy(pattern(), Size div 256))/binary>>.

loop_children() ->
    proplists:get_value(active, supervisor:count_children(py_loop_sup)).

loop_pids() ->
    lists:sort([Pid || {_, Pid, _, _} <- supervisor:which_children(py_loop_sup), is_pid(Pid)]).
