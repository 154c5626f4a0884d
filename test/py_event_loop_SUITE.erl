%% Loops driven from Erlang: the event process's timers, fd readiness, child processes,
%% sockets, call results and waiters. Each case asserts the exact events.
-module(py_event_loop_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [{group, lifecycle}, {group, timers}, {group, waiters}, {group, fds},
     {group, results}, {group, children}, {group, sockets}, {group, bad_input},
     kill_default_event_process, killed_event_process_releases_fds_and_children].

groups() ->
    [{lifecycle, [], [create_and_destroy_1000_loops, owner_exit_destroys_the_loop,
                      loops_are_independent]},
     {timers, [], [hundred_thousand_timers_fire_exactly_once, cancelled_timer_never_fires,
                   cancel_after_fire_drops_the_queued_event, zero_ms_timers,
                   timers_are_never_early, equal_delays_fire_in_start_order]},
     {waiters, [], [cancel_during_blocked_poll, poller_killed_mid_wait, poll_zero_never_blocks,
                    poll_timeout_returns_empty, destroy_answers_blocked_waiter,
                    events_arriving_together_leave_in_one_reply,
                    event_process_spins_only_while_watching]},
     {fds, [], [pipe_readiness_is_rearmed_and_removed, rearm_batch_survives_a_closed_fd,
                socket_fd_readiness,
                destroy_releases_selects_without_closing_fds]},
     {results, [], [call_results_in_order, call_errors, call_many_is_all_or_nothing]},
     {children, [], [subprocess_echo, subprocess_stderr_and_signals, subprocess_not_found,
                     destroy_kills_children]},
     {sockets, [], [tcp_socket_events, udp_socket_events]},
     {bad_input, [], [bad_fds, bad_rearm_batches, bad_child_arguments, forged_internal_messages,
                      bad_callback_ids, bad_delays, bad_poll_timeout, bad_loop_options,
                      calls_on_a_destroyed_loop]}].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(pybeam),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    {ok, Loop, EP} = py_event_loop_v2:new(),
    [{loop, Loop}, {ep, EP} | Config].

end_per_testcase(_Case, Config) ->
    _ = py_event_loop_v2:destroy(?config(loop, Config), ?config(ep, Config)),
    ok.

%%% Lifecycle

create_and_destroy_1000_loops(_Config) ->
    Cycle = fun(N) -> [begin
                           {ok, L, E} = py_event_loop_v2:new(),
                           ok = py_event_loop_v2:destroy(L, E)
                       end || _ <- lists:seq(1, N)]
            end,
    %% Allocator caches (glibc arenas, the emulator's carriers) settle during the first
    %% loops; the baseline is taken after them, so what remains is what loops leak.
    Cycle(100),
    py_test_util:wait_equal(1, fun loop_threads/0, 10000),
    Fds0 = py_test_util:open_fds(),
    Rss0 = py_test_util:rss_mb(),
    Cycle(1000),
    %% Each loop's thread finishes on its own once closed: only this case's loop is left.
    py_test_util:wait_equal(1, fun loop_threads/0, 10000),
    ?assertEqual(Fds0, py_test_util:open_fds()),
    py_test_util:wait_until(fun() -> py_test_util:rss_mb() - Rss0 < 20 end, 5000),
    ct:pal("RSS ~b MB before, ~b MB after 1000 loops", [Rss0, py_test_util:rss_mb()]),
    %% Only this test case's own loop is left under the loop supervisor.
    ?assertMatch([{_, Pid, worker, _}] when is_pid(Pid), supervisor:which_children(py_loop_sup)).

owner_exit_destroys_the_loop(_Config) ->
    Self = self(),
    Owner = spawn(fun() -> {ok, L, E} = py_event_loop_v2:new(), Self ! {loop, L, E},
                           receive stop -> ok end end),
    {Loop, EP} = receive {loop, L, E} -> {L, E} end,
    Mon = erlang:monitor(process, EP),
    Owner ! stop,
    receive {'DOWN', Mon, process, EP, normal} -> ok after 5000 -> ct:fail(loop_outlived_owner) end,
    ?assertEqual({error, loop_destroyed}, py_event_loop_v2:destroy(Loop, EP)).

loops_are_independent(Config) ->
    {ok, L2, E2} = py_event_loop_v2:new(),
    EP = ?config(ep, Config),
    _ = py_event_loop_v2:start_timer(EP, 0, 1),
    _ = py_event_loop_v2:start_timer(E2, 0, 2),
    ?assertEqual([{1, timer}], py_event_loop_v2:poll(EP, 1000)),
    ?assertEqual([{2, timer}], py_event_loop_v2:poll(E2, 1000)),
    ok = py_event_loop_v2:destroy(L2, E2),
    %% The other loop goes on.
    _ = py_event_loop_v2:start_timer(EP, 0, 3),
    ?assertEqual([{3, timer}], py_event_loop_v2:poll(EP, 1000)).

%%% Timers

hundred_thousand_timers_fire_exactly_once(Config) ->
    EP = ?config(ep, Config),
    N = 100000,
    rand:seed(exsss, {1, 2, 3}),
    [py_event_loop_v2:start_timer(EP, rand:uniform(51) - 1, Id) || Id <- lists:seq(1, N)],
    Events = collect(EP, N, 20000),
    ?assertEqual(N, length(Events)),
    ?assertEqual(lists:seq(1, N), lists:sort([Id || {Id, timer} <- Events])),
    %% Nothing fires twice.
    ?assertEqual([], py_event_loop_v2:poll(EP, 100)).

cancelled_timer_never_fires(Config) ->
    EP = ?config(ep, Config),
    Refs = [{Id, py_event_loop_v2:start_timer(EP, 30, Id)} || Id <- lists:seq(1, 1000)],
    [ok = py_event_loop_v2:cancel_timer(EP, Ref) || {Id, Ref} <- Refs, Id rem 2 =:= 0],
    Events = collect(EP, 500, 5000),
    ?assertEqual([Id || Id <- lists:seq(1, 1000), Id rem 2 =:= 1], [Id || {Id, timer} <- Events]),
    ?assertEqual([], py_event_loop_v2:poll(EP, 100)),
    ?assertMatch(#{timers := 0}, py_event_loop_v2:info(EP)).

cancel_after_fire_drops_the_queued_event(Config) ->
    EP = ?config(ep, Config),
    Ref = py_event_loop_v2:start_timer(EP, 1, 7),
    _ = py_event_loop_v2:start_timer(EP, 1, 8),
    py_test_util:wait_until(fun() -> maps:get(events, py_event_loop_v2:info(EP)) =:= 2 end),
    ok = py_event_loop_v2:cancel_timer(EP, Ref),
    ?assertEqual([{8, timer}], py_event_loop_v2:poll(EP, 0)).

zero_ms_timers(Config) ->
    EP = ?config(ep, Config),
    [py_event_loop_v2:start_timer(EP, 0, Id) || Id <- lists:seq(1, 100)],
    ?assertEqual([{Id, timer} || Id <- lists:seq(1, 100)], collect(EP, 100, 1000)).

timers_are_never_early(Config) ->
    EP = ?config(ep, Config),
    Delays = [1, 2, 5, 10, 25, 50],
    Starts = [{Id, D, erlang:monotonic_time(microsecond),
               py_event_loop_v2:start_timer(EP, D, Id)} || {Id, D} <- lists:enumerate(Delays)],
    Fired = collect_timed(EP, length(Delays), 2000),
    [begin
         {Id, D, T0, _} = lists:keyfind(Id, 1, Starts),
         ?assert(At - T0 >= D * 1000)
     end || {Id, At} <- Fired].

equal_delays_fire_in_start_order(Config) ->
    EP = ?config(ep, Config),
    %% A timer started later never gets an earlier deadline, and timers due in the same
    %% millisecond fire in start order: equal delays fire first-in, first-out.
    Ids = lists:seq(1, 2000),
    [py_event_loop_v2:start_timer(EP, 20, Id) || Id <- Ids],
    Events = collect(EP, 2000, 5000),
    ?assertEqual(Ids, [Id || {Id, timer} <- Events]).

%%% Waiters

cancel_during_blocked_poll(Config) ->
    EP = ?config(ep, Config),
    Self = self(),
    %% Timer 2 would end the poll first, at 1 s, were its cancel lost; the margin is wide
    %% so that a loaded machine cannot fire it before the cancel arrives.
    _ = py_event_loop_v2:start_timer(EP, 1200, 1),
    Other = py_event_loop_v2:start_timer(EP, 1000, 2),
    spawn_link(fun() ->
                       T0 = erlang:monotonic_time(millisecond),
                       Events = py_event_loop_v2:poll(EP, 5000),
                       Self ! {polled, Events, erlang:monotonic_time(millisecond) - T0}
               end),
    py_test_util:wait_until(fun() -> maps:get(waiters, py_event_loop_v2:info(EP)) =:= 1 end),
    %% The cancel reaches the event process while the poll waits: it must neither end
    %% the poll early (with []) nor leave it hanging.
    ok = py_event_loop_v2:cancel_timer(EP, Other),
    receive
        {polled, Events, Elapsed} ->
            ?assertEqual([{1, timer}], Events),
            ?assert(Elapsed >= 1190 andalso Elapsed < 4000)
    after 8000 ->
        ct:fail(poll_hung)
    end.

poller_killed_mid_wait(Config) ->
    EP = ?config(ep, Config),
    Poller = spawn(fun() -> py_event_loop_v2:poll(EP, infinity) end),
    py_test_util:wait_until(fun() -> maps:get(waiters, py_event_loop_v2:info(EP)) =:= 1 end, 1000),
    exit(Poller, kill),
    py_test_util:wait_until(fun() -> maps:get(waiters, py_event_loop_v2:info(EP)) =:= 0 end, 1000),
    _ = py_event_loop_v2:start_timer(EP, 0, 5),
    %% The event went to nobody dead: the next poll gets it.
    ?assertEqual([{5, timer}], py_event_loop_v2:poll(EP, 1000)).

%% A waiter is answered once the event process's mailbox is empty: events that arrive
%% together leave in one reply, not one reply each.
events_arriving_together_leave_in_one_reply(Config) ->
    EP = ?config(ep, Config),
    Self = self(),
    spawn_link(fun() -> Self ! {polled, py_event_loop_v2:poll(EP, 5000)} end),
    py_test_util:wait_until(fun() -> maps:get(waiters, py_event_loop_v2:info(EP)) =:= 1 end, 1000),
    %% The three events wait in the mailbox of the suspended event process.
    ok = sys:suspend(EP),
    [_ = py_event_loop_v2:start_timer(EP, 0, I) || I <- [1, 2, 3]],
    ok = sys:resume(EP),
    receive
        {polled, Events} -> ?assertEqual([{1, timer}, {2, timer}, {3, timer}], Events)
    after 5000 ->
        ct:fail(waiter_not_answered)
    end.

%% An idle event process that watches an fd looks at its mailbox for `spin_us' before it
%% blocks; one that watches nothing blocks at once.
event_process_spins_only_while_watching(_Config) ->
    {ok, Loop, EP} = py_event_loop_v2:new(#{spin_us => 10000}),
    ?assertNot(busy_after_a_message(EP)),
    {R, W} = pipe(),
    ok = py_event_loop_v2:add_reader(EP, R, 1),
    ?assert(busy_after_a_message(EP)),
    %% The spin ends: blocked again well after spin_us.
    timer:sleep(50),
    ?assertEqual({status, waiting}, process_info(EP, status)),
    %% Readiness still arrives and is delivered while it spins.
    write_fd(W, <<"x">>),
    ?assertEqual([{1, read}], py_event_loop_v2:poll(EP, 1000)),
    ok = py_event_loop_v2:remove_reader(EP, R),
    ?assertNot(busy_after_a_message(EP)),
    ok = py_event_loop_v2:destroy(Loop, EP),
    close_fds([R, W]).

%% Whether the event process keeps running (its reductions grow) in the 3 ms after it has
%% answered a request.
busy_after_a_message(EP) ->
    _ = py_event_loop_v2:info(EP),
    {reductions, R0} = process_info(EP, reductions),
    timer:sleep(3),
    {reductions, R1} = process_info(EP, reductions),
    R1 - R0 > 500.

poll_zero_never_blocks(Config) ->
    EP = ?config(ep, Config),
    _ = py_event_loop_v2:start_timer(EP, 60000, 1),
    T0 = erlang:monotonic_time(millisecond),
    [[] = py_event_loop_v2:poll(EP, 0) || _ <- lists:seq(1, 1000)],
    ?assert(erlang:monotonic_time(millisecond) - T0 < 1000).

poll_timeout_returns_empty(Config) ->
    EP = ?config(ep, Config),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual([], py_event_loop_v2:poll(EP, 100)),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    ?assert(Elapsed >= 100 andalso Elapsed < 500),
    ?assertMatch(#{waiters := 0}, py_event_loop_v2:info(EP)).

destroy_answers_blocked_waiter(Config) ->
    {Loop, EP} = {?config(loop, Config), ?config(ep, Config)},
    Self = self(),
    spawn_link(fun() -> Self ! {polled, py_event_loop_v2:poll(EP, infinity)} end),
    py_test_util:wait_until(fun() -> maps:get(waiters, py_event_loop_v2:info(EP)) =:= 1 end, 1000),
    ok = py_event_loop_v2:destroy(Loop, EP),
    receive {polled, Result} -> ?assertEqual([], Result) after 2000 -> ct:fail(waiter_not_answered) end.

%%% Fds

pipe_readiness_is_rearmed_and_removed(Config) ->
    EP = ?config(ep, Config),
    {R, W} = pipe(),
    ok = py_event_loop_v2:add_reader(EP, R, 10),
    ?assertEqual([], py_event_loop_v2:poll(EP, 50)),
    write_fd(W, <<"abc">>),
    ?assertEqual([{10, read}], py_event_loop_v2:poll(EP, 1000)),
    %% Not read yet: still readable, so it is reported again (level-triggered).
    ?assertEqual([{10, read}], py_event_loop_v2:poll(EP, 1000)),
    ?assertEqual(<<"abc">>, read_fd(R)),
    ?assertEqual([], py_event_loop_v2:poll(EP, 50)),
    write_fd(W, <<"d">>),
    ?assertEqual([{10, read}], py_event_loop_v2:poll(EP, 1000)),
    ok = py_event_loop_v2:remove_reader(EP, R),
    ?assertEqual({error, not_registered}, py_event_loop_v2:remove_reader(EP, R)),
    write_fd(W, <<"e">>),
    ?assertEqual([], py_event_loop_v2:poll(EP, 100)),
    close_fds([R, W]).

%% Readiness of several fds delivered in one poll is re-armed in one batch when the poller
%% comes back; an fd its owner closed in between goes quiet, the others still work.
rearm_batch_survives_a_closed_fd(Config) ->
    EP = ?config(ep, Config),
    Pipes = [pipe() || _ <- lists:seq(1, 3)],
    [{R1, W1}, {R2, W2}, {R3, W3}] = Pipes,
    [ok = py_event_loop_v2:add_reader(EP, R, Id) || {{R, _}, Id} <- lists:zip(Pipes, [1, 2, 3])],
    [write_fd(W, <<"x">>) || {_, W} <- Pipes],
    py_test_util:wait_until(fun() -> maps:get(events, py_event_loop_v2:info(EP)) =:= 3 end, 5000),
    ?assertEqual([{1, read}, {2, read}, {3, read}], lists:sort(py_event_loop_v2:poll(EP, 1000))),
    [<<"x">> = read_fd(R) || R <- [R1, R3]],
    close_fds([R2]),
    %% This poll re-arms all three: 2 is refused (closed), 1 and 3 are idle.
    ?assertEqual([], py_event_loop_v2:poll(EP, 50)),
    write_fd(W3, <<"y">>),
    ?assertEqual([{3, read}], py_event_loop_v2:poll(EP, 1000)),
    <<"y">> = read_fd(R3),
    write_fd(W1, <<"z">>),
    ?assertEqual([{1, read}], py_event_loop_v2:poll(EP, 1000)),
    ok = py_event_loop_v2:remove_reader(EP, R2),
    [ok = py_event_loop_v2:remove_reader(EP, R) || R <- [R1, R3]],
    close_fds([R1, R3, W1, W2, W3]).

socket_fd_readiness(Config) ->
    EP = ?config(ep, Config),
    {ok, [A, B]} = py:eval(<<"[s.detach() for s in __import__('socket').socketpair()]">>),
    %% A socket with room in its buffer is writable at once.
    ok = py_event_loop_v2:add_writer(EP, A, 1),
    ?assertEqual([{1, write}], py_event_loop_v2:poll(EP, 1000)),
    ok = py_event_loop_v2:remove_writer(EP, A),
    ok = py_event_loop_v2:add_reader(EP, B, 2),
    ?assertEqual([], py_event_loop_v2:poll(EP, 50)),
    write_fd(A, <<"ping">>),
    ?assertEqual([{2, read}], py_event_loop_v2:poll(EP, 1000)),
    ?assertEqual(<<"ping">>, read_fd(B)),
    ?assertEqual([], py_event_loop_v2:poll(EP, 50)),
    ok = py_event_loop_v2:remove_reader(EP, B),
    close_fds([A, B]).

destroy_releases_selects_without_closing_fds(Config) ->
    {Loop, EP} = {?config(loop, Config), ?config(ep, Config)},
    {R, W} = pipe(),
    ok = py_event_loop_v2:add_reader(EP, R, 1),
    ok = py_event_loop_v2:add_writer(EP, W, 2),
    ok = py_event_loop_v2:destroy(Loop, EP),
    %% Still the caller's, still open: they work, and another loop can watch them.
    write_fd(W, <<"still open">>),
    ?assertEqual(<<"still open">>, read_fd(R)),
    {ok, L2, E2} = py_event_loop_v2:new(),
    ok = py_event_loop_v2:add_reader(E2, R, 3),
    write_fd(W, <<"x">>),
    ?assertEqual([{3, read}], py_event_loop_v2:poll(E2, 1000)),
    ok = py_event_loop_v2:destroy(L2, E2),
    %% Released before destroy returns (it answered first and released after, and under
    %% load another loop's add_reader could still find the fd taken).
    {ok, L3, E3} = py_event_loop_v2:new(),
    [begin
         {ok, L4, E4} = py_event_loop_v2:new(),
         ok = py_event_loop_v2:add_reader(E4, R, 4),
         ok = py_event_loop_v2:destroy(L4, E4),
         ?assertEqual({I, ok}, {I, py_event_loop_v2:add_reader(E3, R, 5)}),
         ok = py_event_loop_v2:remove_reader(E3, R)
     end || I <- lists:seq(1, 200)],
    ok = py_event_loop_v2:destroy(L3, E3),
    close_fds([R, W]).

%%% Results

call_results_in_order(Config) ->
    {Loop, EP} = {?config(loop, Config), ?config(ep, Config)},
    Ids = lists:seq(1, 1000),
    [ok = py_event_loop_v2:call(Loop, EP, Id, operator, neg, [Id]) || Id <- Ids],
    ?assertEqual([{Id, call_result, -Id} || Id <- Ids], collect(EP, 1000, 5000)).

call_errors(Config) ->
    {Loop, EP} = {?config(loop, Config), ?config(ep, Config)},
    ok = py_event_loop_v2:call(Loop, EP, 1, math, sqrt, [-1.0]),
    ok = py_event_loop_v2:call(Loop, EP, 2, builtins, object, []),
    ?assertMatch([{1, call_error, {python, <<"ValueError">>, <<"math domain error">>, _}},
                  {2, call_error, {unsupported_type, <<"object">>}}],
                 collect(EP, 2, 2000)).

call_many_is_all_or_nothing(_Config) ->
    {ok, Loop, EP} = py_event_loop_v2:new(#{capacity => 100}),
    Calls = [{Id, operator, neg, [Id]} || Id <- lists:seq(1, 100)],
    ok = py_event_loop_v2:call_many(Loop, EP, Calls),
    ?assertEqual([{Id, call_result, -Id} || Id <- lists:seq(1, 100)], collect(EP, 100, 5000)),
    %% Held up by a slow call, a batch that does not fit is refused whole.
    ok = py_event_loop_v2:call(Loop, EP, 1000, time, sleep, [0.2]),
    timer:sleep(50),
    ok = py_event_loop_v2:call_many(Loop, EP, [{I, operator, neg, [I]} || I <- lists:seq(1, 60)]),
    ?assertEqual({error, overloaded},
                 py_event_loop_v2:call_many(Loop, EP, [{I, operator, neg, [I]} || I <- lists:seq(61, 101)])),
    Events = collect(EP, 61, 5000),
    ?assertEqual([1000 | lists:seq(1, 60)], [Id || {Id, call_result, _} <- Events]),
    ?assertEqual({bad_call, 2, {x}},
                 badarg_cause(fun() -> py_event_loop_v2:call_many(Loop, EP, [{1, m, f, []}, {x}]) end)),
    ?assertEqual({calls, improper_list},
                 badarg_cause(fun() -> py_event_loop_v2:call_many(Loop, EP, [{1, m, f, []} | tail]) end)),
    ok = py_event_loop_v2:destroy(Loop, EP).

%%% Children

subprocess_echo(Config) ->
    EP = ?config(ep, Config),
    Input = iolist_to_binary([integer_to_list(I) ++ "\n" || I <- lists:seq(1, 20000)]),
    {ok, OsPid} = py_event_loop_v2:spawn(EP, 9, [<<"cat">>], #{stdin => {data, Input}}),
    ?assert(is_integer(OsPid)),
    Events = collect_until_exit(EP, 9, 10000),
    {Output, [Exit]} = lists:splitwith(fun({9, K, _}) -> K =:= subprocess_stdout end, Events),
    ?assertEqual(Input, iolist_to_binary([D || {9, subprocess_stdout, D} <- Output])),
    ?assertEqual({9, subprocess_exit, 0}, Exit).

subprocess_stderr_and_signals(Config) ->
    EP = ?config(ep, Config),
    {ok, _} = py_event_loop_v2:spawn(EP, 1, [<<"sh">>, <<"-c">>, <<"echo out; echo err >&2; exit 3">>], #{}),
    Events = collect_until_exit(EP, 1, 5000),
    ?assertEqual([<<"out\n">>], [D || {1, subprocess_stdout, D} <- Events]),
    ?assertEqual([<<"err\n">>], [D || {1, subprocess_stderr, D} <- Events]),
    ?assertEqual({1, subprocess_exit, 3}, lists:last(Events)),
    {ok, _} = py_event_loop_v2:spawn(EP, 2, [<<"sleep">>, <<"30">>], #{}),
    ok = py_event_loop_v2:kill(EP, 2, 15),
    ?assertEqual([{2, subprocess_exit, -15}], collect_until_exit(EP, 2, 5000)),
    ?assertEqual({error, not_registered}, py_event_loop_v2:kill(EP, 2, 15)).

subprocess_not_found(Config) ->
    EP = ?config(ep, Config),
    ?assertEqual({error, enoent}, py_event_loop_v2:spawn(EP, 1, [<<"/no/such/program">>], #{})),
    ?assertMatch(#{children := 0}, py_event_loop_v2:info(EP)).

destroy_kills_children(Config) ->
    {Loop, EP} = {?config(loop, Config), ?config(ep, Config)},
    {ok, OsPid} = py_event_loop_v2:spawn(EP, 1, [<<"sleep">>, <<"30">>], #{}),
    ?assert(filelib:is_dir(io_lib:format("/proc/~b", [OsPid]))),
    ok = py_event_loop_v2:destroy(Loop, EP),
    py_test_util:wait_until(fun() -> not filelib:is_dir(io_lib:format("/proc/~b", [OsPid])) end, 5000).

%%% Sockets

tcp_socket_events(Config) ->
    EP = ?config(ep, Config),
    {ok, Listen} = gen_tcp:listen(0, [binary, {active, false}, {reuseaddr, true}]),
    {ok, Port} = inet:port(Listen),
    {ok, Client} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
    {ok, Server} = gen_tcp:accept(Listen),
    ok = py_event_loop_v2:watch_socket(EP, Server, 4),
    Chunks = [integer_to_binary(I) || I <- lists:seq(1, 500)],
    [ok = gen_tcp:send(Client, [C, $,]) || C <- Chunks],
    ok = gen_tcp:close(Client),
    Events = collect_until(EP, fun({4, socket_closed, closed}) -> true; (_) -> false end, 5000),
    Data = iolist_to_binary([D || {4, socket_data, D} <- Events]),
    ?assertEqual(iolist_to_binary([[C, $,] || C <- Chunks]), Data),
    ?assertEqual({4, socket_closed, closed}, lists:last(Events)),
    gen_tcp:close(Listen).

udp_socket_events(Config) ->
    EP = ?config(ep, Config),
    %% UDP drops what does not fit the receive buffer; the default 16 KB holds only
    %% about 34 small datagrams (kernel accounting), so the burst below needs more.
    {ok, Server} = gen_udp:open(0, [binary, {active, false}, {ip, {127, 0, 0, 1}},
                                    {recbuf, 1 bsl 20}]),
    {ok, Port} = inet:port(Server),
    ok = py_event_loop_v2:watch_socket(EP, Server, 6),
    {ok, Client} = gen_udp:open(0, [binary, {ip, {127, 0, 0, 1}}]),
    {ok, ClientPort} = inet:port(Client),
    [ok = gen_udp:send(Client, {127, 0, 0, 1}, Port, <<I:32>>) || I <- lists:seq(1, 50)],
    Events = collect(EP, 50, 5000),
    ?assertEqual([{6, socket_data, {{127, 0, 0, 1}, ClientPort, <<I:32>>}} || I <- lists:seq(1, 50)],
                 Events),
    gen_udp:close(Client).

%%% Bad input

bad_fds(Config) ->
    EP = ?config(ep, Config),
    ?assertEqual({fd, foo}, badarg_cause(fun() -> py_event_loop_v2:add_reader(EP, foo, 1) end)),
    ?assertEqual({fd, 1.5}, badarg_cause(fun() -> py_event_loop_v2:add_writer(EP, 1.5, 1) end)),
    ?assertEqual({error, badfd}, py_event_loop_v2:add_reader(EP, -1, 1)),
    ?assertEqual({error, badfd}, py_event_loop_v2:add_reader(EP, 999999, 1)),
    %% Beyond any fd number (and any C int): refused, not an exception in the event process.
    ?assertEqual({error, badfd}, py_event_loop_v2:add_reader(EP, 1 bsl 70, 1)),
    {R, W} = pipe(),
    close_fds([R]),
    ?assertEqual({error, badfd}, py_event_loop_v2:add_reader(EP, R, 1)),
    ok = py_event_loop_v2:add_writer(EP, W, 1),
    ?assertEqual({error, already_registered}, py_event_loop_v2:add_writer(EP, W, 2)),
    ok = py_event_loop_v2:remove_writer(EP, W),
    close_fds([W]),
    %% An fd another loop is already watching cannot be taken over.
    {R2, W2} = pipe(),
    {ok, L2, E2} = py_event_loop_v2:new(),
    ok = py_event_loop_v2:add_reader(E2, R2, 1),
    ?assertEqual({error, already_registered}, py_event_loop_v2:add_reader(EP, R2, 1)),
    ok = py_event_loop_v2:destroy(L2, E2),
    %% Released by the destroyed loop: free to watch again.
    ok = py_event_loop_v2:add_reader(EP, R2, 1),
    ok = py_event_loop_v2:remove_reader(EP, R2),
    close_fds([R2, W2]),
    %% Regular files and directories cannot be polled.
    {ok, FileFd} = py:eval(<<"__import__('os').open(p, 0)">>, #{p => list_to_binary(code:which(?MODULE))}),
    ?assertEqual({error, badfd}, py_event_loop_v2:add_reader(EP, FileFd, 1)),
    {ok, DirFd} = py:eval(<<"__import__('os').open('/', 0)">>),
    ?assertEqual({error, badfd}, py_event_loop_v2:add_reader(EP, DirFd, 1)),
    close_fds([FileFd, DirFd]),
    ?assertMatch(#{fds := 0}, py_event_loop_v2:info(EP)).

%% The batch re-arm NIF is internal, but still refuses what is not a list of watches.
bad_rearm_batches(_Config) ->
    ?assertMatch({badarg, _}, py_nif:fd_select_all(foo)),
    ?assertMatch({badarg, _}, py_nif:fd_select_all([{make_ref(), read, m}])),
    {R, W} = pipe(),
    {ok, Watch} = py_nif:fd_watch(R),
    ?assertMatch({badarg, _}, py_nif:fd_select_all([{Watch, sideways, m}])),
    ?assertMatch({badarg, _}, py_nif:fd_select_all([{Watch, read, m} | improper])),
    ?assertEqual([], py_nif:fd_select_all([])),
    ok = py_nif:fd_stop(Watch),
    %% A stopped watch is refused like a closed fd, not selected.
    ?assertEqual([{error, badfd}], py_nif:fd_select_all([{Watch, read, m}])),
    close_fds([R, W]).

%% Malformed argv, env, stdin and signals are refused with a reason; the event process
%% lives on.
bad_child_arguments(Config) ->
    EP = ?config(ep, Config),
    Spawn = fun(Argv, Opts) -> badarg_cause(fun() -> py_event_loop_v2:spawn(EP, 1, Argv, Opts) end) end,
    Argv = <<"argv must be a non-empty list of strings without NUL">>,
    ?assertEqual(Argv, Spawn([<<"echo">> | foo], #{})),
    ?assertEqual(Argv, Spawn([<<"echo">>, <<"a">> | <<"b">>], #{})),
    ?assertEqual(Argv, Spawn([<<"echo">>, 42], #{})),
    ?assertEqual(Argv, Spawn([<<"ec", 0, "ho">>], #{})),
    ?assertEqual(<<"env must be a list of \"NAME=value\" strings">>,
                 Spawn([<<"echo">>], #{env => [<<"A=1">> | x]})),
    Stdin = <<"stdin must be null or {data, iodata()}">>,
    ?assertEqual(Stdin, Spawn([<<"cat">>], #{stdin => {data, [<<"a">> | x]}})),
    ?assertEqual(Stdin, Spawn([<<"cat">>], #{stdin => {data, 5}})),
    ?assertEqual(Stdin, Spawn([<<"cat">>], #{stdin => bogus})),
    ?assertEqual(<<"cwd must be a string">>, Spawn([<<"echo">>], #{cwd => 5})),
    %% Still serving, and nothing was started.
    ?assertMatch(#{children := 0}, py_event_loop_v2:info(EP)),
    {ok, _} = py_event_loop_v2:spawn(EP, 2, [<<"cat">>], #{stdin => {data, [<<"o">>, $k]}}),
    Events = collect(EP, 2, 5000),
    ?assertEqual([{2, subprocess_stdout, <<"ok">>}, {2, subprocess_exit, 0}], Events),
    {ok, _} = py_event_loop_v2:spawn(EP, 3, [<<"sleep">>, <<"30">>], #{}),
    ?assertEqual({error, einval}, py_event_loop_v2:kill(EP, 3, 99999)),
    ?assertEqual({error, einval}, py_event_loop_v2:kill(EP, 3, 1 bsl 70)),
    ?assertEqual({kill, 0}, badarg_cause(fun() -> py_event_loop_v2:kill(EP, 3, 0) end)),
    ok = py_event_loop_v2:kill(EP, 3, 9),
    ?assertEqual([{3, subprocess_exit, -9}], collect(EP, 1, 5000)).

bad_callback_ids(Config) ->
    EP = ?config(ep, Config),
    ?assertEqual({callback_id, foo}, badarg_cause(fun() -> py_event_loop_v2:start_timer(EP, 1, foo) end)),
    ?assertEqual({callback_id, 0}, badarg_cause(fun() -> py_event_loop_v2:start_timer(EP, 1, 0) end)),
    ?assertEqual({callback_id, -3}, badarg_cause(fun() -> py_event_loop_v2:add_reader(EP, 0, -3) end)),
    ?assertEqual({callback_id, <<"1">>},
                 badarg_cause(fun() -> py_event_loop_v2:call(?config(loop, Config), EP, <<"1">>, m, f, []) end)).

bad_delays(Config) ->
    EP = ?config(ep, Config),
    ?assertEqual({delay, -1}, badarg_cause(fun() -> py_event_loop_v2:start_timer(EP, -1, 1) end)),
    ?assertEqual({delay, 1.5}, badarg_cause(fun() -> py_event_loop_v2:start_timer(EP, 1.5, 1) end)),
    ?assertEqual({delay_too_long, 1 bsl 40},
                 badarg_cause(fun() -> py_event_loop_v2:start_timer(EP, 1 bsl 40, 1) end)),
    ?assertMatch(#{timers := 0}, py_event_loop_v2:info(EP)).

bad_poll_timeout(Config) ->
    EP = ?config(ep, Config),
    ?assertEqual({timeout, -5}, badarg_cause(fun() -> py_event_loop_v2:poll(EP, -5) end)),
    ?assertEqual({timeout, soon}, badarg_cause(fun() -> py_event_loop_v2:poll(EP, soon) end)),
    %% Beyond what `receive ... after' takes: this used to end the event process.
    ?assertEqual({timeout, 1 bsl 32}, badarg_cause(fun() -> py_event_loop_v2:poll(EP, 1 bsl 32) end)),
    ?assertEqual({timeout, 1 bsl 70}, badarg_cause(fun() -> py_event_loop_v2:poll(EP, 1 bsl 70) end)),
    %% The longest timeout is taken, and an event answers it.
    Self = self(),
    Poller = spawn_link(fun() -> Self ! {polled, py_event_loop_v2:poll(EP, 16#FFFFFFFF)} end),
    py_test_util:wait_until(fun() -> maps:get(waiters, py_event_loop_v2:info(EP)) =:= 1 end, 1000),
    _ = py_event_loop_v2:start_timer(EP, 0, 5),
    receive {polled, Polled} -> ?assertEqual([{5, timer}], Polled) after 5000 -> ct:fail({stuck, Poller}) end,
    ?assertEqual({event_proc, nope}, badarg_cause(fun() -> py_event_loop_v2:poll(nope, 0) end)).

%% Messages in the shapes only the loop thread, the NIFs and the API send, but malformed,
%% sent by hand: each is dropped, and the loop goes on working. Each of these ended the
%% event process before.
forged_internal_messages(Config) ->
    EP = ?config(ep, Config),
    Bad = [foo, -1, 1 bsl 70, 1.5, [a | b], [x], [{x, y}], [{1, 2}], <<"x">>, self()],
    Forged = lists:append(
               [[{'$py_results', X, [], []}, {'$py_results', [], X, []}, {'$py_results', [], [], X},
                 {'$py_results_collect', X, X, X},
                 {'$py_loop_cmds', X}, {'$py_loop_cmds', [{watch, X, read}]},
                 {'$py_loop_cmds', [{watch, 0, X}]}, {'$py_loop_cmds', [{rearm, 0, X}]},
                 {'$py_loop_cmds', [{wake_after, X}]}, {'$py_loop_cmds', [X]},
                 {'$py_loop_cmds', [{unwatch, 0, X}]}, {'$py_event', X, info},
                 {system, X, get_state}]
                || X <- Bad]
               %% Deadlines no timer can have (an integer one in range would be a timer).
               ++ [[{'$py_start_timer', X, 1, make_ref()} || X <- [foo, 1.5, 1 bsl 70, -(1 bsl 70)]]]),
    [EP ! Msg || Msg <- Forged],
    %% A malformed request to the event process gets an error, not a crash.
    [?assertEqual({error, {bad_request, Request}}, py_event_proc:call(EP, Request))
     || Request <- [{poll, 1 bsl 70}, {poll, soon}, {add_fd, 0, sideways, 1},
                    {remove_fd, 0, sideways}, {spawn, 1, not_argv, #{}},
                    {spawn, 1, [<<"true">>], not_opts}, {watch_socket, not_a_port, 1},
                    {stream_open, 1, make_ref(), self(), not_a_job}, no_such_request]],
    %% Still serving: a timer, a poll, and the counters. Events in a proper list are queued
    %% as they come (the event process does not look inside them): those of the two result
    %% messages with [x], [{x, y}] and [{1, 2}] as their events.
    _ = py_event_loop_v2:start_timer(EP, 0, 42),
    ?assertEqual([x, x, {x, y}, {x, y}, {1, 2}, {1, 2}, {42, timer}], py_event_loop_v2:poll(EP, 5000)),
    ?assertMatch(#{fds := 0, timers := 0}, py_event_loop_v2:info(EP)).

bad_loop_options(_Config) ->
    Loops = supervisor:which_children(py_loop_sup),
    [?assertEqual({Key, Value}, badarg_cause(fun() -> py_event_loop_v2:new(#{Key => Value}) end))
     || {Key, Value} <- [{spin_us, -1}, {spin_us, fast}, {max_batch, 0}, {capacity, -3},
                         {max_tasks, 1.5}, {capacity, <<"big">>}]],
    ?assertEqual({owner, me}, badarg_cause(fun() -> py_event_loop_v2:new(#{owner => me}) end)),
    ?assertEqual({opts, [spin_us]}, badarg_cause(fun() -> py_event_loop_v2:new([spin_us]) end)),
    %% Nothing was started for them; a spin above the native cap is taken as the cap.
    ?assertEqual(Loops, supervisor:which_children(py_loop_sup)),
    {ok, Loop, EP} = py_event_loop_v2:new(#{spin_us => 0}),
    ok = py_event_loop_v2:destroy(Loop, EP),
    {ok, Loop2, EP2} = py_event_loop_v2:new(#{spin_us => 1000000000}),
    ok = py_event_loop_v2:destroy(Loop2, EP2).

calls_on_a_destroyed_loop(Config) ->
    {Loop, EP} = {?config(loop, Config), ?config(ep, Config)},
    {R, W} = pipe(),
    ok = py_event_loop_v2:destroy(Loop, EP),
    Destroyed = {error, loop_destroyed},
    ?assertEqual(Destroyed, py_event_loop_v2:destroy(Loop, EP)),
    ?assertEqual(Destroyed, py_event_loop_v2:poll(EP, 0)),
    ?assertEqual(Destroyed, py_event_loop_v2:start_timer(EP, 1, 1)),
    ?assertEqual(Destroyed, py_event_loop_v2:cancel_timer(EP, {1, 1, make_ref()})),
    ?assertEqual(Destroyed, py_event_loop_v2:add_reader(EP, R, 1)),
    ?assertEqual(Destroyed, py_event_loop_v2:remove_writer(EP, W)),
    ?assertEqual(Destroyed, py_event_loop_v2:spawn(EP, 1, [<<"true">>], #{})),
    ?assertEqual(Destroyed, py_event_loop_v2:kill(EP, 1, 9)),
    ?assertEqual(Destroyed, py_event_loop_v2:info(EP)),
    ?assertEqual(Destroyed, py_event_loop_v2:call(Loop, EP, 1, math, sqrt, [1.0])),
    ?assertEqual(Destroyed, py:call(math, sqrt, [1.0], #{}, #{loop => {Loop, EP}})),
    close_fds([R, W]).

%%% The default loop

kill_default_event_process(_Config) ->
    [{Loop, EP}] = py_loops:default_loops(),
    ?assertEqual(1, default_loop_threads()),
    Self = self(),
    Callers = [spawn_link(fun() -> Self ! {called, py:call(time, sleep, [0.5])} end)
               || _ <- lists:seq(1, 3)],
    py_test_util:wait_until(fun() -> maps:get(pending, py_event_proc:info(EP)) =:= 3 end),
    exit(EP, kill),
    %% A caller watches the event process only after its first 2 ms of waiting: one that
    %% had not begun to watch it when it died learns of it as noproc.
    [receive {called, R} ->
             ?assertMatch({error, {event_loop_down, Why}} when Why =:= killed; Why =:= noproc, R)
     after 2000 -> ct:fail(caller_not_told) end || _ <- Callers],
    %% The supervisor starts a new default loop...
    py_test_util:wait_until(fun() -> [{L, _}] = py_loops:default_loops(), L =/= Loop end, 5000),
    [{_, NewEP}] = py_loops:default_loops(),
    ?assert(NewEP =/= EP andalso is_process_alive(NewEP)),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16.0])),
    %% ...and the old loop's thread is gone: one default loop thread again.
    py_test_util:wait_equal(1, fun default_loop_threads/0, 5000),
    ?assertEqual(true, maps:get(closed, py_nif:loop_stats(Loop))).

%% An event process that dies without shutting down (killed here) still lets go of what it
%% watched: the caller's fd can be watched by another loop (and is still open), its child
%% is killed and collected.
killed_event_process_releases_fds_and_children(_Config) ->
    {ok, _Loop, EP} = py_event_loop_v2:new(),
    {R, W} = pipe(),
    ok = py_event_loop_v2:add_reader(EP, R, 1),
    {ok, OsPid} = py_event_loop_v2:spawn(EP, 2, [<<"sleep">>, <<"30">>], #{}),
    unlink(EP),
    exit(EP, kill),
    py_test_util:wait_until(fun() -> not filelib:is_dir(io_lib:format("/proc/~b", [OsPid])) end, 5000),
    {ok, Loop2, EP2} = py_event_loop_v2:new(),
    py_test_util:wait_until(fun() -> py_event_loop_v2:add_reader(EP2, R, 7) =:= ok end, 5000),
    write_fd(W, <<"still open">>),
    ?assertEqual([{7, read}], py_event_loop_v2:poll(EP2, 1000)),
    ?assertEqual(<<"still open">>, read_fd(R)),
    ok = py_event_loop_v2:destroy(Loop2, EP2),
    close_fds([R, W]).

%%% Helpers

collect(EP, N, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    collect(EP, N, Deadline, []).

collect(_EP, N, _Deadline, Acc) when length(Acc) >= N ->
    Acc;
collect(EP, N, Deadline, Acc) ->
    Left = Deadline - erlang:monotonic_time(millisecond),
    Left > 0 orelse ct:fail({timeout, length(Acc), of_, N}),
    collect(EP, N, Deadline, Acc ++ py_event_loop_v2:poll(EP, Left)).

collect_timed(EP, N, Timeout) ->
    collect_timed(EP, N, erlang:monotonic_time(millisecond) + Timeout, []).

collect_timed(_EP, N, _Deadline, Acc) when length(Acc) >= N ->
    Acc;
collect_timed(EP, N, Deadline, Acc) ->
    Events = py_event_loop_v2:poll(EP, max(1, Deadline - erlang:monotonic_time(millisecond))),
    At = erlang:monotonic_time(microsecond),
    collect_timed(EP, N, Deadline, Acc ++ [{Id, At} || {Id, timer} <- Events]).

collect_until_exit(EP, Id, Timeout) ->
    collect_until(EP, fun({I, subprocess_exit, _}) -> I =:= Id; (_) -> false end, Timeout).

collect_until(EP, Done, Timeout) ->
    collect_until(EP, Done, erlang:monotonic_time(millisecond) + Timeout, []).

collect_until(EP, Done, Deadline, Acc) ->
    Left = Deadline - erlang:monotonic_time(millisecond),
    Left > 0 orelse ct:fail({timeout, Acc}),
    Events = Acc ++ py_event_loop_v2:poll(EP, Left),
    case lists:any(Done, Events) of
        true -> Events;
        false -> collect_until(EP, Done, Deadline, Events)
    end.

pipe() ->
    {ok, [R, W]} = py:eval(<<"list(__import__('os').pipe())">>),
    {R, W}.

write_fd(Fd, Data) ->
    {ok, _} = py:eval(<<"__import__('os').write(fd, data)">>, #{fd => Fd, data => {bytes, Data}}).

read_fd(Fd) ->
    {ok, Data} = py:eval(<<"__import__('os').read(fd, 65536)">>, #{fd => Fd}),
    Data.

close_fds(Fds) ->
    [{ok, _} = py:eval(<<"__import__('os').close(fd)">>, #{fd => Fd}) || Fd <- Fds],
    ok.

%% Threads of loops created at runtime (index 0), and of the default loop (index 1).
loop_threads() -> threads_named(<<"pybeam-loop-0\n">>).
default_loop_threads() -> threads_named(<<"pybeam-loop-1\n">>).

threads_named(Name) ->
    {ok, Tasks} = file:list_dir("/proc/self/task"),
    length([T || T <- Tasks, file:read_file("/proc/self/task/" ++ T ++ "/comm") =:= {ok, Name}]).

badarg_cause(Fun) ->
    try Fun() of
        Result -> ct:fail({expected_badarg, Result})
    catch
        error:badarg:Stack ->
            [{_, _, _, Info} | _] = Stack,
            #{cause := Cause} = proplists:get_value(error_info, Info),
            Cause
    end.
