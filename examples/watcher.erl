%% The worked example of docs/event-loop.md.
-module(watcher).
-export([run/0]).

run() ->
    {ok, Loop, EP} = py_event_loop_v2:new(),
    %% A pipe from Python, to have an fd to watch.
    {ok, [R, W]} = py:eval(<<"list(__import__('os').pipe())">>),
    Beat = py_callback_id:next(),
    Pipe = py_callback_id:next(),
    Child = py_callback_id:next(),
    _ = py_event_loop_v2:start_timer(EP, 100, Beat),
    ok = py_event_loop_v2:add_reader(EP, R, Pipe),
    {ok, _OsPid} = py_event_loop_v2:spawn(EP, Child, [<<"sh">>, <<"-c">>, <<"echo hi; exit 3">>], #{}),
    {ok, _} = py:eval(<<"__import__('os').write(w, b'ping')">>, #{w => W}),
    loop(Loop, EP, #{beat => Beat, pipe => Pipe, child => Child, fd => R}, 0).

loop(Loop, EP, _Ids, Beats) when Beats >= 3 ->
    py_event_loop_v2:destroy(Loop, EP);
loop(Loop, EP, #{beat := Beat, pipe := Pipe, child := Child, fd := R} = Ids, Beats) ->
    Events = py_event_loop_v2:poll(EP, 1000),
    lists:foldl(
      fun({Id, timer}, N) when Id =:= Beat ->
              io:format("beat ~b~n", [N + 1]),
              _ = py_event_loop_v2:start_timer(EP, 100, Beat),
              N + 1;
         ({Id, read}, N) when Id =:= Pipe ->
              {ok, Data} = py:eval(<<"__import__('os').read(r, 100)">>, #{r => R}),
              io:format("pipe: ~p~n", [Data]),
              N;
         ({Id, subprocess_stdout, Out}, N) when Id =:= Child ->
              io:format("child says ~p~n", [Out]),
              N;
         ({Id, subprocess_exit, Code}, N) when Id =:= Child ->
              io:format("child exited with ~b~n", [Code]),
              N
      end, Beats, Events),
    loop(Loop, EP, Ids, Beats + length([x || {Id, timer} <- Events, Id =:= Beat])).
