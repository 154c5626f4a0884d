%% @doc The event process's timers, coalesced per millisecond tick.
%%
%% Timers due in the same millisecond share one Erlang timer: starting 100,000 timers in a
%% burst arms a handful of Erlang timers, not 100,000. Deadlines are absolute monotonic
%% milliseconds, rounded up, so a timer never fires early. Within a tick, timers fire in
%% the order they were started.
%%
%% A timer is known by `{Deadline, Ref}', so starting one costs a prepend to its tick's
%% list and nothing per timer elsewhere: keeping 100,000 pending timers in maps cost a few
%% hundred nanoseconds per insert, which measured as most of a timer's cost. A cancel is
%% kept with its tick and goes when the tick fires.
-module(py_timer_set).

-export([new/0, add/3, set_tick_timer/3, cancel/2, take_tick/2, delivered/1, size/1]).

-record(tick, {
    %% newest first
    timers = [] :: [{reference(), term()}],
    live = 0 :: non_neg_integer(),
    cancelled = #{} :: #{reference() => true},
    erlang_timer :: reference() | undefined
}).

-opaque t() :: #{ticks := #{integer() => #tick{}},
                 pending := non_neg_integer(),
                 %% the latest tick that fired since events were last delivered
                 last_fired := integer()}.
-type timer() :: {integer(), reference()}.
-export_type([t/0, timer/0]).

-spec new() -> t().
new() ->
    #{ticks => #{}, pending => 0, last_fired => 0}.

%% @doc Adds timer `{Deadline, Ref}' (monotonic ms) for callback `Id'. `new_tick' means
%% nothing else was due in that millisecond: the caller arms an Erlang timer for it and
%% records it with {@link set_tick_timer/3}.
-spec add(timer(), term(), t()) -> {new_tick | ok, t()}.
add({Deadline, Ref}, Id, #{ticks := Ticks, pending := P} = T) ->
    case Ticks of
        #{Deadline := #tick{timers = L, live = N} = Tick} ->
            {ok, T#{ticks := Ticks#{Deadline := Tick#tick{timers = [{Ref, Id} | L], live = N + 1}},
                    pending := P + 1}};
        #{} ->
            {new_tick, T#{ticks := Ticks#{Deadline => #tick{timers = [{Ref, Id}], live = 1}},
                          pending := P + 1}}
    end.

%% @doc Records the Erlang timer armed for a tick.
-spec set_tick_timer(integer(), reference(), t()) -> t().
set_tick_timer(Deadline, ErlRef, #{ticks := Ticks} = T) ->
    #{Deadline := Tick} = Ticks,
    T#{ticks := Ticks#{Deadline := Tick#tick{erlang_timer = ErlRef}}}.

%% @doc Cancels a timer. `{pending, ErlangTimer | none, T}': it had not fired and never
%% will; the Erlang timer of its tick is returned when no timer of the tick is left.
%% `{fired, T}': its tick fired since the last delivery, so its queued event must be
%% dropped. `{gone, T}': delivered already, or cancelled before.
-spec cancel(timer(), t()) -> {pending, reference() | none, t()} | {fired | gone, t()}.
cancel({Deadline, Ref}, #{ticks := Ticks, pending := P} = T) ->
    case Ticks of
        #{Deadline := #tick{cancelled = C}} when is_map_key(Ref, C) ->
            {gone, T};
        #{Deadline := #tick{live = 1, erlang_timer = ErlRef}} ->
            {pending, none_if_undefined(ErlRef),
             T#{ticks := maps:remove(Deadline, Ticks), pending := P - 1}};
        #{Deadline := #tick{live = N, cancelled = C} = Tick} ->
            {pending, none,
             T#{ticks := Ticks#{Deadline := Tick#tick{live = N - 1, cancelled = C#{Ref => true}}},
                pending := P - 1}};
        #{} ->
            case Deadline =< maps:get(last_fired, T) of
                true -> {fired, T};
                false -> {gone, T}
            end
    end.

%% @doc The timers of a tick that fired, in start order, as `[{Ref, Id}]' (cancelled ones
%% left out).
-spec take_tick(integer(), t()) -> {[{reference(), term()}], t()}.
take_tick(Deadline, #{ticks := Ticks, pending := P} = T) ->
    case maps:take(Deadline, Ticks) of
        error ->
            {[], T};
        {#tick{timers = Timers, live = Live, cancelled = C}, Ticks1} ->
            Due = case map_size(C) of
                      0 -> lists:reverse(Timers);
                      _ -> [E || {Ref, _} = E <- lists:reverse(Timers), not is_map_key(Ref, C)]
                  end,
            {Due, T#{ticks := Ticks1, pending := P - Live,
                     last_fired := max(Deadline, maps:get(last_fired, T))}}
    end.

%% @doc The queued events were delivered: a later cancel of those timers has nothing left
%% to drop.
-spec delivered(t()) -> t().
delivered(T) ->
    T#{last_fired := 0}.

%% @doc Pending timers.
-spec size(t()) -> non_neg_integer().
size(#{pending := P}) ->
    P.

none_if_undefined(undefined) -> none;
none_if_undefined(Ref) -> Ref.
