-module(py_timer_set_tests).
-include_lib("eunit/include/eunit.hrl").

same_tick_shares_one_erlang_timer_test() ->
    T0 = py_timer_set:new(),
    {new_tick, T1} = py_timer_set:add(r1, 1, 100, T0),
    T2 = py_timer_set:set_tick_timer(100, tick_timer, T1),
    {ok, T3} = py_timer_set:add(r2, 2, 100, T2),
    {new_tick, T4} = py_timer_set:add(r3, 3, 101, T3),
    ?assertEqual(3, py_timer_set:size(T4)),
    {Due, T5} = py_timer_set:take_tick(100, T4),
    ?assertEqual([{r1, 1}, {r2, 2}], Due),
    ?assertEqual(1, py_timer_set:size(T5)).

cancelled_timers_do_not_fire_test() ->
    {new_tick, T1} = py_timer_set:add(r1, 1, 5, py_timer_set:new()),
    {ok, T2} = py_timer_set:add(r2, 2, 5, T1),
    {cancelled, none, T3} = py_timer_set:cancel(r1, T2),
    ?assertEqual({not_found, T3}, py_timer_set:cancel(r1, T3)),
    ?assertMatch({[{r2, 2}], _}, py_timer_set:take_tick(5, T3)).

last_cancel_returns_the_tick_timer_test() ->
    {new_tick, T1} = py_timer_set:add(r1, 1, 7, py_timer_set:new()),
    T2 = py_timer_set:set_tick_timer(7, erl_ref, T1),
    {cancelled, erl_ref, T3} = py_timer_set:cancel(r1, T2),
    ?assertEqual(0, py_timer_set:size(T3)),
    ?assertEqual({[], T3}, py_timer_set:take_tick(7, T3)).

fired_timers_cannot_be_cancelled_test() ->
    {new_tick, T1} = py_timer_set:add(r1, 1, 9, py_timer_set:new()),
    {[{r1, 1}], T2} = py_timer_set:take_tick(9, T1),
    ?assertMatch({not_found, _}, py_timer_set:cancel(r1, T2)).
