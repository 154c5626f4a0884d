-module(py_timer_set_tests).
-include_lib("eunit/include/eunit.hrl").

same_tick_shares_one_erlang_timer_test() ->
    T0 = py_timer_set:new(),
    {new_tick, T1} = py_timer_set:add({100, r1}, 1, T0),
    T2 = py_timer_set:set_tick_timer(100, tick_timer, T1),
    {ok, T3} = py_timer_set:add({100, r2}, 2, T2),
    {new_tick, T4} = py_timer_set:add({101, r3}, 3, T3),
    ?assertEqual(3, py_timer_set:size(T4)),
    {Due, T5} = py_timer_set:take_tick(100, T4),
    ?assertEqual([{r1, 1}, {r2, 2}], Due),
    ?assertEqual(1, py_timer_set:size(T5)).

cancelled_timers_do_not_fire_test() ->
    {new_tick, T1} = py_timer_set:add({5, r1}, 1, py_timer_set:new()),
    {ok, T2} = py_timer_set:add({5, r2}, 2, T1),
    {pending, none, T3} = py_timer_set:cancel({5, r1}, T2),
    ?assertMatch({gone, _}, py_timer_set:cancel({5, r1}, T3)),
    ?assertEqual(1, py_timer_set:size(T3)),
    ?assertMatch({[{r2, 2}], _}, py_timer_set:take_tick(5, T3)).

last_cancel_returns_the_tick_timer_test() ->
    {new_tick, T1} = py_timer_set:add({7, r1}, 1, py_timer_set:new()),
    T2 = py_timer_set:set_tick_timer(7, erl_ref, T1),
    {pending, erl_ref, T3} = py_timer_set:cancel({7, r1}, T2),
    ?assertEqual(0, py_timer_set:size(T3)),
    ?assertEqual({[], T3}, py_timer_set:take_tick(7, T3)).

cancel_after_fire_until_delivery_test() ->
    {new_tick, T1} = py_timer_set:add({9, r1}, 1, py_timer_set:new()),
    {[{r1, 1}], T2} = py_timer_set:take_tick(9, T1),
    %% Fired and not yet delivered: the caller must drop the queued event.
    ?assertMatch({fired, _}, py_timer_set:cancel({9, r1}, T2)),
    %% Delivered: nothing left to drop.
    ?assertMatch({gone, _}, py_timer_set:cancel({9, r1}, py_timer_set:delivered(T2))).

cancels_die_with_their_tick_test() ->
    {new_tick, T1} = py_timer_set:add({3, r1}, 1, py_timer_set:new()),
    {ok, T2} = py_timer_set:add({3, r2}, 2, T1),
    {pending, none, T3} = py_timer_set:cancel({3, r1}, T2),
    {[{r2, 2}], T4} = py_timer_set:take_tick(3, T3),
    ?assertEqual(py_timer_set:delivered(T4), py_timer_set:delivered(py_timer_set:new())).
