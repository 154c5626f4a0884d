%% Async from Erlang: py:async_call/await, async_gather, async_stream, async_cancel, and
%% async results as events of a py_event_loop_v2 loop. Every case checks that nothing is
%% left in the caller's mailbox.
-module(py_async_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(H, async_helpers).

all() ->
    [{group, async_call}, {group, gather}, {group, stream}, {group, events},
     {group, bad_input}, busy_asyncio_workload_delays_a_call_by_at_most_one_batch].

groups() ->
    [{async_call, [], [coroutine_plain_and_awaitable_results, async_errors_have_the_python_shape,
                       runs_on_the_threads_running_loop, await_timeout_cancels_the_task,
                       async_cancel_cancels_the_task, refused_call_answers_through_await,
                       loop_death_is_reported, calls_run_concurrently,
                       tasks_are_named_after_their_call]},
     {gather, [], [thousand_sleeps_finish_in_under_half_a_second, results_in_input_order,
                   mixed_success_and_failure, gather_timeout_cancels_unfinished,
                   empty_gather]},
     {stream, [], [async_generator_stream, plain_generator_stream, awaited_iterable_stream,
                   stream_error_mid_way, slow_consumer_is_not_flooded,
                   async_cancel_stops_the_generator, consumer_death_stops_the_generator]},
     {events, [], [async_results_as_events]},
     {bad_input, [], [bad_async_arguments, bad_gather_items, bad_stream_arguments,
                      unknown_refs]}].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(pybeam),
    {ok, _} = py:call(sys, 'path.insert', [0, list_to_binary(?config(data_dir, Config))]),
    Config.

end_per_suite(_Config) ->
    ok.

end_per_testcase(_Case, _Config) ->
    %% No case leaves anything behind.
    ?assertEqual({messages, []}, process_info(self(), messages)),
    ok.

%%% async_call

coroutine_plain_and_awaitable_results(_Config) ->
    R1 = py:async_call(?H, double, [21]),
    R2 = py:async_call(?H, plain, [1]),
    R3 = py:async_call(?H, returns_awaitable, [7]),
    R4 = py:async_call(?H, double, [5], #{delay => 0.01}),
    ?assert(is_reference(R1)),
    ?assertEqual({ok, 7}, py:async_await(R3)),
    ?assertEqual({ok, 42}, py:async_await(R1)),
    ?assertEqual({ok, 2}, py:async_await(R2)),
    ?assertEqual({ok, 10}, py:async_await(R4, 5000)).

async_errors_have_the_python_shape(_Config) ->
    {error, {python, Type, Msg, Tb}} = py:async_await(py:async_call(?H, fail, [<<"boom">>])),
    ?assertEqual({<<"ValueError">>, <<"boom">>}, {Type, Msg}),
    ?assertMatch({_, _}, binary:match(Tb, <<"in fail">>)),
    ?assertMatch({error, {python, <<"AttributeError">>, _, _}},
                 py:async_await(py:async_call(?H, no_such_function, []))),
    ?assertMatch({error, {python, <<"ModuleNotFoundError">>, _, _}},
                 py:async_await(py:async_call(no_such_module, f, []))).

runs_on_the_threads_running_loop(_Config) ->
    ?assertEqual({ok, true}, py:async_await(py:async_call(?H, running_loop_is_the_threads, []))),
    %% Sync calls still see no running loop.
    ?assertEqual({ok, none}, py:eval(<<"__import__('asyncio').events._get_running_loop()">>)).

await_timeout_cancels_the_task(_Config) ->
    Tag = <<"await_timeout">>,
    Ref = py:async_call(?H, sleep_tagged, [Tag, 5.0]),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, timeout}, py:async_await(Ref, 100)),
    ?assert(erlang:monotonic_time(millisecond) - T0 < 1000),
    py_test_util:wait_until(fun() -> lists:member(Tag, cancelled_tags()) end),
    %% The reference is spent.
    ?assertError(badarg, py:async_await(Ref)),
    no_task_left().

async_cancel_cancels_the_task(_Config) ->
    Tag = <<"async_cancel">>,
    Ref = py:async_call(?H, sleep_tagged, [Tag, 5.0]),
    py_test_util:wait_until(fun() -> {ok, true} =:= py:eval(<<"t in __import__('async_helpers').started">>, #{t => Tag}) end),
    ?assertEqual(ok, py:async_cancel(Ref)),
    py_test_util:wait_until(fun() -> lists:member(Tag, cancelled_tags()) end),
    ?assertEqual({error, not_found}, py:async_cancel(Ref)),
    no_task_left().

refused_call_answers_through_await(_Config) ->
    {ok, Loop, EP} = py_event_loop_v2:new(),
    ok = py_event_loop_v2:destroy(Loop, EP),
    Ref = py:async_call(?H, double, [1], #{}, #{loop => {Loop, EP}}),
    ?assertEqual({error, loop_destroyed}, py:async_await(Ref)).

loop_death_is_reported(_Config) ->
    {ok, Loop, EP} = py_event_loop_v2:new(),
    Ref = py:async_call(?H, sleep_tagged, [<<"loop_death">>, 5.0], #{}, #{loop => {Loop, EP}}),
    exit(EP, kill),
    ?assertEqual({error, {event_loop_down, killed}}, py:async_await(Ref, 5000)).

calls_run_concurrently(_Config) ->
    T0 = erlang:monotonic_time(millisecond),
    Refs = [py:async_call(?H, double, [I], #{delay => 0.2}) || I <- lists:seq(1, 50)],
    ?assertEqual([{ok, 2 * I} || I <- lists:seq(1, 50)], [py:async_await(R) || R <- Refs]),
    %% Fifty 0.2 s sleeps overlap.
    ?assert(erlang:monotonic_time(millisecond) - T0 < 1000).

%% Our tasks carry the name of the call that made them, so asyncio.all_tasks() and task
%% reprs say where they came from.
tasks_are_named_after_their_call(_Config) ->
    ?assertEqual({ok, <<"py:async_call">>}, py:async_await(py:async_call(?H, task_name, []))),
    ?assertEqual({ok, [<<"py:async_gather">>, <<"py:async_gather">>]},
                 py:async_gather([{?H, task_name, []}, {?H, task_name, []}])),
    {ok, Ref} = py:async_stream(?H, task_names, [2]),
    ?assertEqual({[<<"py:async_stream">>, <<"py:async_stream">>], done}, collect(Ref)).

%%% gather

thousand_sleeps_finish_in_under_half_a_second(_Config) ->
    T0 = erlang:monotonic_time(millisecond),
    {ok, Results} = py:async_gather([{asyncio, sleep, [0.1, I]} || I <- lists:seq(1, 1000)]),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    ct:pal("1000 x asyncio.sleep(0.1) gathered in ~b ms", [Elapsed]),
    ?assertEqual(lists:seq(1, 1000), Results),
    ?assert(Elapsed < 500).

results_in_input_order(_Config) ->
    %% Later items finish first.
    Items = [{?H, double, [I], #{delay => (20 - I) / 1000}} || I <- lists:seq(1, 20)],
    ?assertEqual({ok, [2 * I || I <- lists:seq(1, 20)]}, py:async_gather(Items)),
    ?assertEqual({ok, [2, 3]}, py:async_gather([{?H, plain, [1]}, {?H, returns_awaitable, [3]}])).

mixed_success_and_failure(_Config) ->
    Items = [{?H, double, [1]}, {?H, fail, [<<"second">>]}, {?H, plain, [3]},
             {?H, fail, [<<"fourth">>]}],
    {error, {gather_failed, Failures}} = py:async_gather(Items),
    ?assertMatch([{2, {python, <<"ValueError">>, <<"second">>, _}},
                  {4, {python, <<"ValueError">>, <<"fourth">>, _}}], Failures).

gather_timeout_cancels_unfinished(_Config) ->
    Items = [{?H, sleep_tagged, [<<"quick">>, 0.0]},
             {?H, sleep_tagged, [<<"slow1">>, 5.0]},
             {?H, sleep_tagged, [<<"slow2">>, 5.0]}],
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, timeout}, py:async_gather(Items, #{timeout => 200})),
    ?assert(erlang:monotonic_time(millisecond) - T0 < 1000),
    py_test_util:wait_until(fun() -> [] =:= [<<"slow1">>, <<"slow2">>] -- cancelled_tags() end),
    ?assertNot(lists:member(<<"quick">>, cancelled_tags())),
    no_task_left().

empty_gather(_Config) ->
    ?assertEqual({ok, []}, py:async_gather([])).

%%% stream

async_generator_stream(_Config) ->
    {ok, Ref} = py:async_stream(?H, agen, [5, <<"agen_stream">>]),
    ?assertEqual({[0, 1, 2, 3, 4], done}, collect(Ref)),
    ?assert(lists:member(<<"agen_stream">>, closed_tags())).

plain_generator_stream(_Config) ->
    {ok, Ref} = py:async_stream(?H, gen, [300, <<"gen_stream">>]),
    ?assertEqual({[I * 10 || I <- lists:seq(0, 299)], done}, collect(Ref)).

awaited_iterable_stream(_Config) ->
    {ok, Ref} = py:async_stream(?H, returns_list, []),
    ?assertEqual({[1, 2, 3], done}, collect(Ref)).

stream_error_mid_way(_Config) ->
    {ok, Ref} = py:async_stream(?H, agen_fails_after, [2]),
    ?assertMatch({[0, 1], {error, {python, <<"RuntimeError">>, <<"stream broke">>, _}}}, collect(Ref)),
    {ok, Ref2} = py:async_stream(?H, plain, [1]),
    ?assertMatch({[], {error, {python, <<"TypeError">>, _, _}}}, collect(Ref2)).

%% A producer of 400 items and a consumer that takes 2 ms per item: the consumer's mailbox
%% and the producer's lead stay within the documented bounds.
slow_consumer_is_not_flooded(_Config) ->
    Window = 8,
    Tag = <<"slow_consumer">>,
    {ok, Ref} = py:async_stream(?H, gen, [400, Tag], #{}, #{window => Window}),
    Observe = fun Loop(Consumed, MaxQueue, MaxLead) ->
        {message_queue_len, Q} = process_info(self(), message_queue_len),
        {ok, Produced} = py:call(?H, produced_count, [Tag]),
        receive
            {py_stream, Ref, {data, _}} ->
                timer:sleep(2),
                Loop(Consumed + 1, max(MaxQueue, Q), max(MaxLead, Produced - Consumed));
            {py_stream, Ref, done} ->
                {Consumed, MaxQueue, MaxLead}
        after 5000 ->
            ct:fail(stream_stalled)
        end
    end,
    {Consumed, MaxQueue, MaxLead} = Observe(0, 0, 0),
    ct:pal("window ~b: max mailbox ~b, max producer lead ~b", [Window, MaxQueue, MaxLead]),
    ?assertEqual(400, Consumed),
    ?assert(MaxQueue < 2 * Window),
    %% At most: what the mailbox holds, and a window in flight between the loop and here.
    ?assert(MaxLead =< 3 * Window).

async_cancel_stops_the_generator(_Config) ->
    Tag = <<"cancelled_stream">>,
    {ok, Ref} = py:async_stream(?H, agen, [1000000, Tag], #{}, #{window => 4}),
    receive {py_stream, Ref, {data, 0}} -> ok after 5000 -> ct:fail(no_data) end,
    ?assertEqual(ok, py:async_cancel(Ref)),
    py_test_util:wait_until(fun() -> lists:member(Tag, closed_tags()) end),
    ?assertEqual({error, not_found}, py:async_cancel(Ref)),
    no_task_left().

consumer_death_stops_the_generator(_Config) ->
    Tag = <<"dead_consumer">>,
    Self = self(),
    Consumer = spawn(fun() ->
                             {ok, Ref} = py:async_stream(?H, gen, [1000000, Tag]),
                             receive {py_stream, Ref, {data, _}} -> Self ! started end,
                             receive never -> ok end
                     end),
    receive started -> ok after 5000 -> ct:fail(not_started) end,
    exit(Consumer, kill),
    py_test_util:wait_until(fun() -> lists:member(Tag, closed_tags()) end),
    no_task_left(),
    [{_, EP}] = py_loops:default_loops(),
    ?assertEqual(0, maps:get(streams, py_event_loop_v2:info(EP))).

%%% events of a py_event_loop_v2 loop

async_results_as_events(_Config) ->
    {ok, Loop, EP} = py_event_loop_v2:new(),
    ok = py_event_loop_v2:async_call(Loop, EP, 11, ?H, double, [4], #{delay => 0.02}),
    ok = py_event_loop_v2:async_call(Loop, EP, 12, ?H, fail, [<<"e">>]),
    ok = py_event_loop_v2:async_call(Loop, EP, 13, ?H, plain, [0]),
    Events = poll_n(EP, 3),
    ?assertMatch([{13, async_result, 1}, {12, async_error, {python, <<"ValueError">>, <<"e">>, _}},
                  {11, async_result, 8}], Events),
    ok = py_event_loop_v2:destroy(Loop, EP).

%%% Fairness: a busy asyncio workload on the loop thread delays a sync call by at most
%%% one batch of callbacks (max_batch, 128).

busy_asyncio_workload_delays_a_call_by_at_most_one_batch(Config) ->
    {Count, EachUs, MaxBatch} = {4000, 200, 128},
    Counter = filename:join(?config(priv_dir, Config), "spins"),
    {ok, Loop, EP} = py_event_loop_v2:new(),
    ok = py_event_loop_v2:async_call(Loop, EP, 1, ?H, busy_callbacks,
                                      [Count, EachUs, list_to_binary(Counter)], #{}),
    ?assertEqual([{1, async_result, none}], py_event_loop_v2:poll(EP, 5000)),
    %% The workload is queued: Count x 200 us = 800 ms of callbacks. The call is in the
    %% loop's queue once call/6 returns, so counting the callbacks that ran from then on
    %% to the call's own run measures the delay in batches, whatever the machine's load.
    T0 = erlang:monotonic_time(microsecond),
    ok = py_event_loop_v2:call(Loop, EP, 2, ?H, spins_done, []),
    Queued = spins_run(Counter),
    [{2, call_result, Done}] = py_event_loop_v2:poll(EP, 5000),
    Us = erlang:monotonic_time(microsecond) - T0,
    ct:pal("py:call answered in ~b us; ~b callbacks ran while it was queued (~b of ~b run)",
           [Us, Done - Queued, Done, Count]),
    ?assert(Done < Count),
    ?assert(Done - Queued =< MaxBatch),
    py_test_util:wait_until(fun() -> spins_run(Counter) =:= Count end),
    ok = py_event_loop_v2:destroy(Loop, EP).

spins_run(Counter) ->
    {ok, <<N:64/little>>} = file:read_file(Counter),
    N.

%%% Bad input

bad_async_arguments(_Config) ->
    ?assertError(badarg, py:async_call(1, f, [])),
    ?assertError(badarg, py:async_call(m, f, not_a_list)),
    ?assertError(badarg, py:async_call(m, f, [], not_a_map)),
    ?assertError(badarg, py:async_call(m, f, [], #{}, #{timeout => -1})),
    ?assertError(badarg, py:async_await(not_a_ref)),
    ?assertError(badarg, py:async_await(make_ref(), -5)),
    %% A timeout beyond what `receive ... after' takes is refused before anything is spent.
    ?assertError(badarg, py:async_call(m, f, [], #{}, #{timeout => 1 bsl 32})),
    Slept = py:async_call(asyncio, sleep, [0, slept]),
    ?assertError(badarg, py:async_await(Slept, 1 bsl 32)),
    ?assertEqual({ok, slept}, py:async_await(Slept, 5000)),
    ?assertError(badarg, py:async_cancel(not_a_ref)),
    Ref = py:async_call(?H, plain, [fun() -> ok end]),
    ?assertMatch({error, {unsupported_term, _}}, py:async_await(Ref)).

bad_gather_items(_Config) ->
    ?assertError(badarg, py:async_gather(not_a_list)),
    ?assertError(badarg, py:async_gather([{m, f}])),
    ?assertError(badarg, py:async_gather([{?H, plain, [1]}, {m, f, not_a_list}])),
    ?assertError(badarg, py:async_gather([{?H, plain, [1]} | improper_tail])),
    ?assertError(badarg, py:async_gather([{?H, plain, [1]}], #{timeout => bad})),
    ?assertError(badarg, py:async_gather([{?H, plain, [1]}], #{timeout => 1 bsl 70})),
    ?assertMatch({error, {unsupported_term, _}}, py:async_gather([{?H, plain, [self_ref_fun()]}])).

bad_stream_arguments(_Config) ->
    ?assertError(badarg, py:async_stream(m, f, not_a_list)),
    ?assertError(badarg, py:async_stream(m, f, [], #{}, #{window => 0})),
    ?assertError(badarg, py:async_stream(m, f, [], #{}, #{window => many})),
    ?assertError(badarg, py:async_stream(m, f, [], #{}, not_a_map)),
    ?assertMatch({error, {unsupported_term, _}}, py:async_stream(?H, gen, [fun() -> ok end, <<"t">>])).

unknown_refs(_Config) ->
    ?assertError(badarg, py:async_await(make_ref())),
    ?assertEqual({error, not_found}, py:async_cancel(make_ref())),
    %% Another process's reference is not this process's to await.
    Self = self(),
    spawn(fun() -> Self ! {ref, py:async_call(?H, plain, [1])} end),
    Ref = receive {ref, R} -> R end,
    ?assertError(badarg, py:async_await(Ref)).

%%% Helpers

self_ref_fun() ->
    fun() -> ok end.

collect(Ref) ->
    collect(Ref, []).

collect(Ref, Acc) ->
    receive
        {py_stream, Ref, {data, X}} -> collect(Ref, [X | Acc]);
        {py_stream, Ref, Last} -> {lists:reverse(Acc), Last}
    after 5000 ->
        {lists:reverse(Acc), timeout}
    end.

poll_n(_EP, 0) -> [];
poll_n(EP, N) ->
    case py_event_loop_v2:poll(EP, 5000) of
        [] -> ct:fail({missing_events, N});
        Events -> Events ++ poll_n(EP, N - length(Events))
    end.

cancelled_tags() ->
    {ok, Tags} = py:eval(<<"__import__('async_helpers').cancelled">>),
    Tags.

closed_tags() ->
    {ok, Tags} = py:eval(<<"__import__('async_helpers').closed">>),
    Tags.

%% No async task is left running or waiting on the default loop.
no_task_left() ->
    [{_, EP}] = py_loops:default_loops(),
    py_test_util:wait_until(fun() ->
                                    #{tasks := T, tasks_waiting := W} = py_event_loop_v2:info(EP),
                                    T =:= 0 andalso W =:= 0
                            end).

