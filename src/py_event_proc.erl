%% @doc The event process: one per loop, and the loop's only router.
%%
%% It owns the native loop (its Rust thread is torn down when this process dies) and
%% everything that produces events for the loop:
%%
%% - results the loop thread sends, one message per batch:
%%   `{'$py_results', Replies, Events, StreamItems}'. A reply to a caller's alias is
%%   forwarded as `{Alias, Result}' (a caller that timed out deactivated its alias, so a
%%   late result never reaches it); results addressed to the event queue arrive as
%%   finished `call_*' and `async_*' events and are appended as they are; stream items go
%%   to their consumer, which gets more only while it keeps up (see `py:async_stream/5');
%% - timers (coalesced per millisecond, see `py_timer_set');
%% - fd readiness (`enif_select' messages come straight here, see `py_ep_fds');
%% - child processes (`py_ep_children') and sockets (`py_ep_sockets');
%% - the waiters blocked in `py_event_loop_v2:poll/2', and the loop's own asyncio loop,
%%   which tells this process what to watch and when to wake it (`{'$py_loop_cmds', Cmds}')
%%   and gets its fd readiness and wake-ups in one NIF call once this process's mailbox is
%%   empty (or every 128 messages).
%%
%% Events queue in arrival order until a poller takes them all at once.
%%
%% This is a hand-written receive loop rather than a gen_server because every result of
%% the loop passes through it; it answers `sys' messages and `gen:call' requests all the
%% same. See docs/event-loop.md for the protocol.
-module(py_event_proc).

-export([start_link/1, start/1, call/2, handle/1, info/1, stop/1, valid_timeout/1]).
-export([init/3]).
-export([system_continue/3, system_terminate/4, system_code_change/4, system_get_state/1]).

-record(waiter, {from :: {pid(), term()}, mon :: reference(), timer :: reference() | infinity}).

%% A stream started by `py:async_stream/5'. `ref' is the consumer's monitor alias: data
%% goes to the consumer's pid, the last message to the alias, which removes the monitor.
-record(stream, {consumer :: pid(),
                 ref :: reference(),
                 mon :: reference(),
                 window :: pos_integer(),
                 %% items forwarded since credit was last granted
                 unacked = 0 :: non_neg_integer(),
                 %% waiting for the consumer to drain its mailbox; rechecked after `backoff' ms
                 stalled = false :: boolean(),
                 backoff = 1 :: pos_integer()}).

%% The longest wait between two looks at a slow consumer's mailbox.
-define(MAX_BACKOFF, 50).
%% While more messages wait in the mailbox, at most this many are handled before queued
%% events go to a waiter: events arriving together leave in one reply, not one each.
-define(HOLD_MESSAGES, 128).
%% `infinity' or at most the longest finite timeout `receive ... after' and
%% gen_server:call/3 take: the rule for every timeout of the API (valid_timeout/1).
-define(IS_TIMEOUT(T),
        (T =:= infinity orelse (is_integer(T) andalso T >= 0 andalso T =< 16#FFFFFFFF))).
%% The loop thread asks for wake-ups at most a day ahead (asyncio's longest select
%% timeout); a longer one, only made by hand, is taken as a day.
-define(MAX_WAKE_US, 86400000000).
-define(IS_DIR(D), (D =:= read orelse D =:= write)).
-define(IS_FD(Fd), (is_integer(Fd) andalso Fd >= 0 andalso Fd =< 16#7fffffff)).

-record(state, {
    loop :: py_nif:loop(),
    parent :: pid() | undefined,
    owner_mon :: reference() | undefined,
    %% newest first: a prepend per event, one reverse per delivery
    events = [] :: [tuple()],
    count = 0 :: non_neg_integer(),
    %% messages handled since a waiter could have been answered
    held = 0 :: non_neg_integer(),
    waiters = [] :: [#waiter{}],
    timers = py_timer_set:new() :: py_timer_set:t(),
    fds = py_ep_fds:new() :: py_ep_fds:t(),
    %% fd directions whose event is queued, and those delivered: re-armed when a poller
    %% comes back for more (it has acted on the readiness by then)
    fd_events = [] :: [{integer(), read | write}],
    fd_delivered = [] :: [{integer(), read | write}],
    children = py_ep_children:new() :: py_ep_children:t(),
    sockets = py_ep_sockets:new() :: py_ep_sockets:t(),
    serial = 0 :: non_neg_integer(),
    %% what the loop's own asyncio loop gets, newest first: delivered in one NIF call
    native_out = [] :: [{integer(), read | write} | {failed, integer(), read | write} | wakeup],
    %% messages handled since `native_out' could have gone
    native_held = 0 :: non_neg_integer(),
    native_wakeup :: reference() | undefined,
    %% false for a loop made from Python code: a thread of Python's runs it
    threaded = true :: boolean(),
    streams = #{} :: #{pos_integer() => #stream{}},
    %% consumer monitor -> stream id
    stream_mons = #{} :: #{reference() => pos_integer()},
    %% how long an idle event process looks at its mailbox before it blocks (native units)
    spin = 0 :: non_neg_integer()
}).

-type opts() :: #{default_index => pos_integer(),
                  owner => pid(),
                  max_batch => pos_integer(),
                  capacity => pos_integer(),
                  spin_us => non_neg_integer(),
                  max_tasks => pos_integer()}.
-export_type([opts/0]).

%% @doc Starts an event process and its native loop, linked to the caller (a supervisor).
-spec start_link(opts()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    proc_lib:start_link(?MODULE, init, [self(), Opts, linked]).

%% @doc Starts an unlinked event process and its native loop.
-spec start(opts()) -> {ok, pid()} | {error, term()}.
start(Opts) ->
    proc_lib:start(?MODULE, init, [self(), Opts, unlinked]).

%% @doc A synchronous request (see `handle_request/3'). A dead event process answers
%% `{error, loop_destroyed}' if it was gone before the call, or
%% `{error, {event_loop_down, Reason}}' if it died during it.
-spec call(pid(), term()) -> term().
call(EventProc, Request) ->
    try gen:call(EventProc, '$py_event', Request, infinity) of
        {ok, Reply} -> Reply
    catch
        exit:noproc -> {error, loop_destroyed};
        exit:normal -> {error, loop_destroyed};
        exit:Reason -> {error, {event_loop_down, Reason}}
    end.

%% @doc The `{Loop, EventProc}' handle that `py:call/5' accepts as its `loop' option.
-spec handle(pid()) -> py_loops:handle() | {error, term()}.
handle(EventProc) ->
    call(EventProc, handle).

%% @doc Counters: requests queued and running on the loop thread, completed requests,
%% batches, and here: queued events, waiters, timers, fds, children, sockets, mailbox.
-spec info(pid()) -> map() | {error, term()}.
info(EventProc) ->
    call(EventProc, info).

%% @doc Whether `T' is a timeout the API takes: `infinity' or 0..4294967295 ms.
-spec valid_timeout(term()) -> boolean().
valid_timeout(T) when ?IS_TIMEOUT(T) -> true;
valid_timeout(_) -> false.

%% @doc Stops the event process; its loop thread finishes its batch and exits.
-spec stop(pid()) -> ok | {error, term()}.
stop(EventProc) ->
    call(EventProc, stop).

%% @private
-spec init(pid(), opts(), linked | unlinked) -> no_return().
init(Starter, Opts, Link) ->
    process_flag(message_queue_data, off_heap),
    process_flag(trap_exit, true),
    LoopOpts = maps:merge(#{max_batch => application:get_env(pybeam, max_batch, 128),
                            capacity => application:get_env(pybeam, queue_capacity, 20000),
                            spin_us => application:get_env(pybeam, spin_us, 50),
                            max_tasks => application:get_env(pybeam, max_tasks, 512),
                            index => maps:get(default_index, Opts, 0)},
                          maps:with([max_batch, capacity, spin_us, max_tasks, thread, token], Opts)),
    case py_nif:loop_new(self(), LoopOpts) of
        {ok, Loop} ->
            case Opts of
                #{default_index := I} -> py_loops:register_default(I, Loop, self());
                _ -> ok
            end,
            OwnerMon = case Opts of
                           #{owner := Owner} -> erlang:monitor(process, Owner);
                           _ -> undefined
                       end,
            Parent = case Link of linked -> Starter; unlinked -> undefined end,
            proc_lib:init_ack(Starter, {ok, self()}),
            %% The native loop caps its own spin at 10 ms; so does this.
            Spin = erlang:convert_time_unit(min(maps:get(spin_us, LoopOpts), 10000), microsecond, native),
            loop(#state{loop = Loop, parent = Parent, owner_mon = OwnerMon,
                        threaded = maps:get(thread, Opts, true), spin = Spin});
        {error, Reason} ->
            proc_lib:init_ack(Starter, {error, Reason}),
            exit(normal)
    end.

loop(S) ->
    receive
        Msg -> dispatch(Msg, S)
    after hold_timeout(S) ->
        idle(S)
    end.

hold_timeout(#state{native_out = [_ | _]}) -> 0;
hold_timeout(#state{count = N, waiters = [_ | _]}) when N > 0 -> 0;
hold_timeout(#state{spin = Spin}) when Spin > 0 -> 0;
hold_timeout(_) -> infinity.

%% The mailbox is empty. What the loop's asyncio loop has waiting goes to it, and held
%% events to the waiter, now. Otherwise, while the process watches fds, sockets or
%% children, it looks at its mailbox for up to `spin' before it blocks: their readiness
%% comes through the BEAM's poller, often microseconds after what the loop just did, and
%% a blocked process's scheduler may have gone to sleep by then; waking it (and its CPU,
%% on a VM) costs tens of microseconds. With nothing watched, spinning would only take a
%% core from the loop thread and the callers.
idle(#state{native_out = [_ | _]} = S) ->
    idle(flush_native(S));
idle(#state{count = N, waiters = [_ | _]} = S) when N > 0 ->
    loop(deliver(S));
idle(#state{spin = Spin} = S) when Spin > 0 ->
    case watching(S) of
        true -> spin(S, erlang:monotonic_time() + Spin);
        false -> block(S)
    end;
idle(S) ->
    block(S).

watching(#state{fds = Fds, sockets = Sockets, children = Children}) ->
    py_ep_fds:size(Fds) > 0 orelse py_ep_sockets:size(Sockets) > 0
        orelse py_ep_children:size(Children) > 0.

spin(S, Until) ->
    receive
        Msg -> dispatch(Msg, S)
    after 0 ->
        case erlang:monotonic_time() < Until of
            true ->
                erlang:yield(),
                spin(S, Until);
            false ->
                block(S)
        end
    end.

block(S) ->
    receive
        Msg -> dispatch(Msg, S)
    end.

%% The messages below are sent by the loop thread, the NIFs and this library's API. Their
%% guards, and clauses that skip what no such sender makes, keep one sent by hand with a
%% wrong shape from ending the loop: it is dropped, like any unknown message.
dispatch({'$py_results', Replies, Events, Items}, S)
  when is_list(Replies), is_list(Events), is_list(Items) ->
    route(Replies),
    next(stream_items(Items, append(Events, S)));
dispatch({'$py_results_collect', Replies, Events, Items}, S)
  when is_list(Replies), is_list(Events), is_list(Items) ->
    route(Replies),
    S1 = stream_items(Items, append(Events, S)),
    %% Large binaries passed through: drop our references to the routed ones now.
    erlang:garbage_collect(),
    next(S1);
dispatch({'$py_start_timer', Deadline, Id, Ref}, S) when is_integer(Deadline) ->
    next(start_timer(Deadline, Id, Ref, S));
dispatch({timeout, _, {'$py_tick', Deadline}}, S) ->
    next(tick(Deadline, S));
dispatch({'$py_fd', Fd, Dir, Serial}, S) ->
    next(fd_ready(Fd, Dir, Serial, S));
dispatch({'$py_loop_cmds', Cmds}, S) when is_list(Cmds) ->
    next(loop_commands(Cmds, [], S));
dispatch({timeout, Ref, '$py_native_wakeup'}, S) when Ref =:= S#state.native_wakeup ->
    next(S#state{native_wakeup = undefined, native_out = [wakeup | S#state.native_out]});
dispatch({'$py_child', Id, Stream}, S) ->
    {Events, Children} = py_ep_children:ready(Id, Stream, S#state.children),
    next(enqueue_all(Events, S#state{children = Children}));
dispatch({'$py_cancel_timer', Deadline, Id, Ref}, S) ->
    next(cancel_timer(Deadline, Id, Ref, S));
dispatch({'$py_event', {Pid, _} = From, Request}, S) when is_pid(Pid) ->
    handle_request(Request, From, S);
dispatch({timeout, _, {'$py_poll_timeout', Mon}}, S) ->
    next(poll_timeout(Mon, S));
dispatch({'DOWN', Mon, process, _, _}, S) when Mon =:= S#state.owner_mon ->
    shutdown(normal, S);
dispatch({'DOWN', Mon, process, _, _}, S) when is_map_key(Mon, S#state.stream_mons) ->
    next(consumer_down(Mon, S));
dispatch({timeout, _, {'$py_stream_check', Id}}, S) ->
    next(recheck_stream(Id, S));
dispatch({'DOWN', Mon, process, _, _}, S) ->
    next(forget_waiter(Mon, S));
dispatch({'$py_loop_exit', Why}, S) ->
    loop_exited(Why, S);
dispatch({system, {Pid, _} = From, Msg}, S) when is_pid(Pid) ->
    sys:handle_system_msg(Msg, From, S#state.parent, ?MODULE, [], S);
dispatch({'EXIT', Parent, Reason}, S) when Parent =:= S#state.parent ->
    shutdown(Reason, S);
dispatch(Other, S) ->
    other_message(Other, S).

%% Socket messages become events; anything else is dropped. Data, the frequent case,
%% leaves the socket registry and so the rest of the state as they are.
other_message(Msg, S) ->
    case py_ep_sockets:handle(Msg, S#state.sockets) of
        {event, Event} -> next(enqueue(Event, S));
        {event, Event, Sockets} -> next(enqueue(Event, S#state{sockets = Sockets}));
        {none, Sockets} -> next(S#state{sockets = Sockets});
        not_socket -> loop(S)
    end.

%% After each message. What the loop's asyncio loop gets, and the queued events for the
%% first waiter, if any, leave once the mailbox is empty (or after ?HOLD_MESSAGES more
%% messages): readiness of many fds arrives as one message each, and goes to the loop
%% thread in one NIF call.
next(#state{native_out = []} = S) ->
    to_waiters(S);
next(#state{native_held = Held} = S) when Held < ?HOLD_MESSAGES ->
    to_waiters(S#state{native_held = Held + 1});
next(S) ->
    to_waiters(flush_native(S)).

flush_native(#state{native_out = Out, loop = Loop} = S) ->
    ok = py_nif:deliver_events(Loop, lists:reverse(Out)),
    S#state{native_out = [], native_held = 0}.

to_waiters(#state{count = 0} = S) ->
    loop(S);
to_waiters(#state{waiters = []} = S) ->
    loop(S);
to_waiters(#state{held = Held} = S) when Held < ?HOLD_MESSAGES ->
    %% Answered when the mailbox is empty (loop/1's `after 0'), or after more messages.
    loop(S#state{held = Held + 1});
to_waiters(S) ->
    loop(deliver(S)).

%%% The loop's own asyncio loop

%% One message per loop iteration. Its re-arms go in one NIF call after the other commands:
%% a re-arm only touches a direction whose readiness is pending, which no watch or unwatch
%% in the same batch can make pending, so doing them last changes nothing else.
loop_commands([{rearm, Fd, Dir} | Rest], Rearm, S) when ?IS_DIR(Dir) ->
    loop_commands(Rest, [{Fd, Dir} | Rearm], S);
loop_commands([Cmd | Rest], Rearm, S) ->
    loop_commands(Rest, Rearm, loop_command(Cmd, S));
loop_commands(_End, [], S) ->
    S;
loop_commands(_End, Rearm, #state{fds = Fds} = S) ->
    S#state{fds = py_ep_fds:rearm(lists:reverse(Rearm), Fds)}.

loop_command({watch, Fd, Dir}, #state{fds = Fds, serial = Serial} = S)
  when ?IS_FD(Fd), ?IS_DIR(Dir) ->
    case py_ep_fds:add(Fd, Dir, native, Serial + 1, Fds) of
        {ok, Fds1} -> S#state{fds = Fds1, serial = Serial + 1};
        {error, _} -> S#state{native_out = [{failed, Fd, Dir} | S#state.native_out]}
    end;
loop_command({unwatch, Fd, Dir}, #state{fds = Fds} = S) when ?IS_DIR(Dir) ->
    case py_ep_fds:remove(Fd, Dir, Fds) of
        {ok, _Id, _Pending, Fds1} -> S#state{fds = Fds1};
        {error, not_registered} -> S
    end;
loop_command({wake_after, Micros}, S) when is_integer(Micros), Micros >= 0 ->
    cancel_native_wakeup(S),
    Deadline = (erlang:monotonic_time(microsecond) + min(Micros, ?MAX_WAKE_US) + 999) div 1000,
    Ref = erlang:start_timer(Deadline, self(), '$py_native_wakeup', [{abs, true}]),
    S#state{native_wakeup = Ref};
loop_command(wake_cancel, S) ->
    cancel_native_wakeup(S),
    S#state{native_wakeup = undefined};
loop_command(_Unknown, S) ->
    S.

cancel_native_wakeup(#state{native_wakeup = undefined}) -> ok;
cancel_native_wakeup(#state{native_wakeup = Ref}) ->
    _ = erlang:cancel_timer(Ref, [{async, true}, {info, false}]),
    ok.

%%% Replies and call results

route([{To, Result} | Rest]) when is_reference(To); is_pid(To) ->
    To ! {To, Result},
    route(Rest);
route([_ | Rest]) ->
    route(Rest);
route(_End) ->
    ok.

%%% Streams

stream_items([{Id, Item} | Rest], #state{streams = Streams} = S) ->
    case Streams of
        #{Id := Stream} -> stream_items(Rest, stream_item(Id, Item, Stream, S));
        #{} -> stream_items(Rest, S)   % cancelled: its last items are dropped
    end;
stream_items([_ | Rest], S) ->
    stream_items(Rest, S);
stream_items(_End, S) ->
    S.

stream_item(Id, {data, _} = Data, #stream{consumer = Pid, ref = Ref, unacked = N} = St, S) ->
    Pid ! {py_stream, Ref, Data},
    St1 = St#stream{unacked = N + 1},
    case St1#stream.stalled orelse N + 1 < half(St1#stream.window) of
        true -> put_stream(Id, St1, S);
        false -> check_consumer(Id, St1, S)
    end;
stream_item(Id, Last, #stream{ref = Ref} = St, S) ->
    %% `done' or `{error, Reason}': sent to the alias, which ends the consumer's monitor.
    Ref ! {py_stream, Ref, Last},
    forget_stream(Id, St, S).

half(Window) -> max(1, Window div 2).

%% Grants the loop the credit used since the last grant if the consumer keeps up (fewer
%% than `window' messages queued); otherwise looks again later. So the consumer's mailbox
%% never holds more than about 2 x window items of one stream.
check_consumer(Id, #stream{consumer = Pid, window = W, unacked = N, backoff = B} = St, S) ->
    case erlang:process_info(Pid, message_queue_len) of
        {message_queue_len, Len} when Len < W ->
            ok = py_nif:stream_credit(S#state.loop, Id, N),
            put_stream(Id, St#stream{unacked = 0, stalled = false, backoff = 1}, S);
        {message_queue_len, _} ->
            _ = erlang:start_timer(B, self(), {'$py_stream_check', Id}),
            put_stream(Id, St#stream{stalled = true, backoff = min(2 * B, ?MAX_BACKOFF)}, S);
        undefined ->
            %% The consumer is gone; its 'DOWN' message cancels the stream.
            put_stream(Id, St, S)
    end.

recheck_stream(Id, #state{streams = Streams} = S) ->
    case Streams of
        #{Id := #stream{stalled = true} = St} -> check_consumer(Id, St, S);
        #{} -> S
    end.

put_stream(Id, St, #state{streams = Streams} = S) ->
    S#state{streams = Streams#{Id => St}}.

forget_stream(Id, #stream{mon = Mon, ref = Ref}, #state{streams = Streams, stream_mons = Mons} = S) ->
    erlang:demonitor(Mon, [flush]),
    ets:delete(py_streams, Ref),
    S#state{streams = maps:remove(Id, Streams), stream_mons = maps:remove(Mon, Mons)}.

open_stream(Id, Ref, Consumer, {stream, _, _, _, _, Window} = Job, #state{loop = Loop} = S) ->
    case submit(Loop, Id, event, Job) of
        ok ->
            Mon = erlang:monitor(process, Consumer),
            true = ets:insert(py_streams, {Ref, self(), Id}),
            St = #stream{consumer = Consumer, ref = Ref, mon = Mon, window = Window},
            {ok, S#state{streams = (S#state.streams)#{Id => St},
                         stream_mons = (S#state.stream_mons)#{Mon => Id}}};
        Refused ->
            {Refused, S}
    end.

%% Cancelled by `py:async_cancel/1': the consumer's last message says so.
cancel_stream(Id, #state{streams = Streams, loop = Loop} = S) ->
    case Streams of
        #{Id := #stream{ref = Ref} = St} ->
            ok = py_nif:cancel(Loop, Id),
            Ref ! {py_stream, Ref, {error, cancelled}},
            {ok, forget_stream(Id, St, S)};
        #{} ->
            {{error, not_found}, S}
    end.

%% The consumer died: the generator is stopped (its `finally' blocks run).
consumer_down(Mon, #state{stream_mons = Mons, streams = Streams, loop = Loop} = S) ->
    Id = maps:get(Mon, Mons),
    ok = py_nif:cancel(Loop, Id),
    forget_stream(Id, maps:get(Id, Streams), S).

submit(Loop, Id, ReplyTo, Job) ->
    case py_nif:submit(Loop, Id, ReplyTo, Job) of
        dirty -> py_nif:submit_dirty(Loop, Id, ReplyTo, Job);
        Result -> Result
    end.

%% Appends events that arrive in order, as a batch.
append([], S) ->
    S;
append(Events, #state{events = Queued, count = N} = S) ->
    try lists:reverse(Events, Queued) of
        Queued1 -> S#state{events = Queued1, count = N + length(Events)}
    catch
        error:badarg -> S   % an improper list
    end.

%%% Timers

start_timer(0, Id, _Ref, S) ->
    enqueue({Id, timer}, S);
start_timer(Deadline, Id, Ref, #state{timers = Timers} = S) ->
    case py_timer_set:add({Deadline, Ref}, Id, Timers) of
        {ok, Timers1} ->
            S#state{timers = Timers1};
        {new_tick, Timers1} ->
            try erlang:start_timer(Deadline, self(), {'$py_tick', Deadline}, [{abs, true}]) of
                ErlRef -> S#state{timers = py_timer_set:set_tick_timer(Deadline, ErlRef, Timers1)}
            catch
                error:badarg -> S   % no timer can have this deadline; only made by hand
            end
    end.

tick(Deadline, #state{timers = Timers, events = Events, count = N} = S) ->
    {Due, Timers1} = py_timer_set:take_tick(Deadline, Timers),
    Events1 = lists:foldl(fun({_Ref, Id}, Acc) -> [{Id, timer} | Acc] end, Events, Due),
    S#state{timers = Timers1, events = Events1, count = N + length(Due)}.

cancel_timer(Deadline, Id, Ref, #state{timers = Timers} = S) ->
    case py_timer_set:cancel({Deadline, Ref}, Timers) of
        {pending, none, Timers1} ->
            S#state{timers = Timers1};
        {pending, ErlRef, Timers1} ->
            _ = erlang:cancel_timer(ErlRef, [{async, true}, {info, false}]),
            S#state{timers = Timers1};
        {fired, Timers1} ->
            %% Fired since the last delivery: its event is queued and must not go out.
            drop_event({Id, timer}, S#state{timers = Timers1});
        {gone, _} ->
            S
    end.

%%% Fds

fd_ready(Fd, Dir, Serial, #state{fds = Fds} = S) ->
    case py_ep_fds:ready(Fd, Dir, Serial, Fds) of
        {event, {native, Dir}, Fds1} ->
            %% The loop's asyncio loop re-arms it itself, once its callback has run.
            S#state{fds = Fds1, native_out = [{Fd, Dir} | S#state.native_out]};
        {event, Event, Fds1} ->
            enqueue(Event, S#state{fds = Fds1, fd_events = [{Fd, Dir} | S#state.fd_events]});
        {stale, Fds1} ->
            S#state{fds = Fds1}
    end.

%%% The event queue and its waiters

enqueue(Event, #state{events = Events, count = N} = S) ->
    S#state{events = [Event | Events], count = N + 1}.

enqueue_all(Events, S) ->
    lists:foldl(fun enqueue/2, S, Events).

%% Removes the earliest queued occurrence of `Event' (a rare path: a late cancel).
drop_event(Event, #state{events = Events, count = N} = S) ->
    case lists:splitwith(fun(E) -> E =/= Event end, lists:reverse(Events)) of
        {Before, [_ | After]} -> S#state{events = lists:reverse(Before ++ After), count = N - 1};
        {_, []} -> S
    end.

%% Takes every queued event. Their fds are re-armed at the next poll: re-armed now, an fd
%% the poller has not read yet would only report the same readiness again.
take_events(S) ->
    {lists:reverse(S#state.events),
     S#state{events = [], count = 0, held = 0, timers = py_timer_set:delivered(S#state.timers),
             fd_events = [], fd_delivered = S#state.fd_events ++ S#state.fd_delivered}}.

rearm_delivered(#state{fd_delivered = []} = S) ->
    S;
rearm_delivered(#state{fd_delivered = Delivered, fds = Fds} = S) ->
    S#state{fds = py_ep_fds:rearm(lists:reverse(Delivered), Fds), fd_delivered = []}.

deliver(#state{waiters = [W | Rest]} = S) ->
    #waiter{from = {Pid, _} = From, mon = Mon, timer = Timer} = W,
    %% A waiter that just died would take the events with it; it is skipped instead.
    %% The reply goes out before the monitor and timer are cleaned up: the waiter's
    %% latency is what the clean-up would otherwise add.
    Alive = is_process_alive(Pid),
    S1 = case Alive of
             true ->
                 {Events, Taken} = take_events(S#state{waiters = Rest}),
                 gen:reply(From, Events),
                 Taken;
             false ->
                 S#state{waiters = Rest}
         end,
    erlang:demonitor(Mon, [flush]),
    cancel_poll_timer(Timer),
    case Alive orelse Rest =:= [] of
        true -> S1;
        false -> deliver(S1)
    end.

poll(From, Timeout, S) ->
    case S of
        #state{count = N} when N > 0 ->
            {Events, S1} = take_events(S),
            gen:reply(From, Events),
            loop(S1);
        #state{} when Timeout =:= 0 ->
            gen:reply(From, []),
            loop(S);
        #state{waiters = Ws} ->
            loop(S#state{waiters = Ws ++ [waiter(From, Timeout)]})
    end.

waiter({Pid, _} = From, Timeout) ->
    Mon = erlang:monitor(process, Pid),
    Timer = case Timeout of
                infinity -> infinity;
                _ -> erlang:start_timer(Timeout, self(), {'$py_poll_timeout', Mon})
            end,
    #waiter{from = From, mon = Mon, timer = Timer}.

poll_timeout(Mon, #state{waiters = Ws} = S) ->
    case lists:keytake(Mon, #waiter.mon, Ws) of
        {value, #waiter{from = From}, Rest} ->
            erlang:demonitor(Mon, [flush]),
            gen:reply(From, []),
            S#state{waiters = Rest};
        false ->
            S
    end.

forget_waiter(Mon, #state{waiters = Ws} = S) ->
    case lists:keytake(Mon, #waiter.mon, Ws) of
        {value, #waiter{timer = Timer}, Rest} ->
            cancel_poll_timer(Timer),
            S#state{waiters = Rest};
        false ->
            S
    end.

cancel_poll_timer(infinity) -> ok;
cancel_poll_timer(Ref) -> _ = erlang:cancel_timer(Ref, [{async, true}, {info, false}]), ok.

%%% Requests (gen:call)

handle_request({poll, Timeout}, From, S) when ?IS_TIMEOUT(Timeout) ->
    poll(From, Timeout, rearm_delivered(S));
handle_request({add_fd, Fd, Dir, Id}, From, #state{fds = Fds, serial = Serial} = S)
  when ?IS_DIR(Dir) ->
    case py_ep_fds:add(Fd, Dir, Id, Serial + 1, Fds) of
        {ok, Fds1} ->
            gen:reply(From, ok),
            loop(S#state{fds = Fds1, serial = Serial + 1});
        {error, _} = Error ->
            gen:reply(From, Error),
            loop(S)
    end;
handle_request({remove_fd, Fd, Dir}, From, #state{fds = Fds} = S) when ?IS_DIR(Dir) ->
    case py_ep_fds:remove(Fd, Dir, Fds) of
        {ok, Id, Pending, Fds1} ->
            gen:reply(From, ok),
            S1 = S#state{fds = Fds1, fd_events = lists:delete({Fd, Dir}, S#state.fd_events),
                         fd_delivered = lists:delete({Fd, Dir}, S#state.fd_delivered)},
            loop(case Pending of
                     true -> drop_event({Id, Dir}, S1);
                     false -> S1
                 end);
        {error, _} = Error ->
            gen:reply(From, Error),
            loop(S)
    end;
handle_request({spawn, Id, Argv, Opts}, From, #state{children = Children} = S)
  when is_list(Argv), is_map(Opts) ->
    case py_ep_children:spawn(Id, Argv, Opts, Children) of
        {ok, OsPid, Children1} ->
            gen:reply(From, {ok, OsPid}),
            loop(S#state{children = Children1});
        Error ->
            gen:reply(From, Error),
            loop(S)
    end;
handle_request({kill, Id, Signal}, From, S) ->
    gen:reply(From, py_ep_children:kill(Id, Signal, S#state.children)),
    loop(S);
handle_request({watch_socket, Socket, Id}, From, #state{sockets = Sockets} = S)
  when is_port(Socket) ->
    case py_ep_sockets:watch(Socket, Id, Sockets) of
        {ok, Events, Sockets1} ->
            gen:reply(From, ok),
            next(enqueue_all(Events, S#state{sockets = Sockets1}));
        {error, _} = Error ->
            gen:reply(From, Error),
            loop(S)
    end;
handle_request({stream_open, Id, Ref, Consumer, {stream, _, _, _, _, Window} = Job}, From, S)
  when is_integer(Id), is_reference(Ref), is_pid(Consumer), is_integer(Window), Window > 0 ->
    {Reply, S1} = open_stream(Id, Ref, Consumer, Job, S),
    gen:reply(From, Reply),
    loop(S1);
handle_request({stream_cancel, Id}, From, S) ->
    {Reply, S1} = cancel_stream(Id, S),
    gen:reply(From, Reply),
    loop(S1);
handle_request(handle, From, S) ->
    gen:reply(From, {S#state.loop, self()}),
    loop(S);
handle_request(info, From, S) ->
    gen:reply(From, counters(S)),
    loop(S);
handle_request({destroy, Loop}, From, #state{loop = Loop} = S) ->
    shutdown(normal, From, S);
handle_request({destroy, _OtherLoop}, From, S) ->
    gen:reply(From, {badarg, not_this_loop}),
    loop(S);
handle_request(stop, From, S) ->
    shutdown(normal, From, S);
handle_request(Request, From, S) ->
    gen:reply(From, {error, {bad_request, Request}}),
    loop(S).

counters(S) ->
    {message_queue_len, Len} = process_info(self(), message_queue_len),
    Stats = py_nif:loop_stats(S#state.loop),
    Stats#{mailbox => Len,
           pending => maps:get(queued, Stats) + maps:get(running, Stats),
           events => S#state.count,
           waiters => length(S#state.waiters),
           timers => py_timer_set:size(S#state.timers),
           fds => py_ep_fds:size(S#state.fds),
           children => py_ep_children:size(S#state.children),
           sockets => py_ep_sockets:size(S#state.sockets),
           streams => map_size(S#state.streams)}.

%%% Teardown

%% The loop thread ended without being asked to (this process closes the loop only on its
%% way out): it goes down with it, so that callers and the supervisor learn of it.
-spec loop_exited(normal | {crash, binary()}, #state{}) -> no_return().
loop_exited(normal, #state{threaded = false} = S) ->
    %% A loop made from Python was closed by its Python code.
    shutdown(normal, S);
loop_exited(normal, S) ->
    shutdown(loop_thread_stopped, S);
loop_exited({crash, Msg}, S) ->
    shutdown({loop_thread_crashed, Msg}, S).

%% Waiters get `[]'; watched fds are released without closing the caller's; children are
%% killed (and collected off the schedulers); handed-over sockets are closed; the loop
%% thread is asked to stop.
-spec shutdown(term(), #state{}) -> no_return().
shutdown(Reason, S) ->
    release_all(S),
    exit(Reason).

%% Asked to go (`destroy', `stop'): the caller is answered once everything is released,
%% so that an fd it watched can be watched again as soon as the call returns.
-spec shutdown(term(), {pid(), term()}, #state{}) -> no_return().
shutdown(Reason, From, S) ->
    release_all(S),
    gen:reply(From, ok),
    exit(Reason).

release_all(S) ->
    [gen:reply(From, []) || #waiter{from = From} <- S#state.waiters],
    %% Consumers learn of it from their monitors ({'DOWN', Ref, ...}).
    [ets:delete(py_streams, Ref) || #stream{ref = Ref} <- maps:values(S#state.streams)],
    py_ep_fds:stop_all(S#state.fds),
    py_ep_children:stop_all(S#state.children),
    py_ep_sockets:close_all(S#state.sockets),
    py_nif:loop_close(S#state.loop).

%% @private
-spec system_continue(pid() | undefined, [sys:dbg_opt()], #state{}) -> no_return().
system_continue(_Parent, _Debug, S) ->
    loop(S).

%% @private
-spec system_terminate(term(), pid() | undefined, [sys:dbg_opt()], #state{}) -> no_return().
system_terminate(Reason, _Parent, _Debug, S) ->
    shutdown(Reason, S).

%% @private
-spec system_code_change(#state{}, module(), term(), term()) -> {ok, #state{}}.
system_code_change(S, _Module, _OldVsn, _Extra) ->
    {ok, S}.

%% @private
-spec system_get_state(#state{}) -> {ok, #state{}}.
system_get_state(S) ->
    {ok, S}.
