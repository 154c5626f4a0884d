%% @doc The event process's timers, coalesced per millisecond tick.
%%
%% Timers due in the same millisecond share one Erlang timer: starting 100,000 timers in a
%% burst arms a few hundred Erlang timers, not 100,000. Deadlines are absolute monotonic
%% milliseconds, rounded up, so a timer never fires early. Within a tick, timers fire in
%% the order they were started. Pure data; the event process arms the ticks it is told to.
-module(py_timer_set).

-export([new/0, add/4, set_tick_timer/3, cancel/2, take_tick/2, size/1]).

-record(tick, {
    count = 0 :: non_neg_integer(),
    %% newest first; cancelled timers are skipped when the tick fires
    timers = [] :: [{reference(), term()}],
    erlang_timer :: reference() | undefined
}).

-opaque t() :: #{ticks := #{integer() => #tick{}}, refs := #{reference() => integer()}}.
-export_type([t/0]).

-spec new() -> t().
new() ->
    #{ticks => #{}, refs => #{}}.

%% @doc Adds a timer due at `Deadline' (monotonic ms). `new_tick' means no timer was due
%% at that millisecond yet: the caller arms an Erlang timer for it and records it with
%% {@link set_tick_timer/3}.
-spec add(reference(), term(), integer(), t()) -> {new_tick | ok, t()}.
add(TRef, Id, Deadline, #{ticks := Ticks, refs := Refs} = T) ->
    Refs1 = Refs#{TRef => Deadline},
    case Ticks of
        #{Deadline := #tick{count = C, timers = L} = Tick} ->
            {ok, T#{ticks := Ticks#{Deadline := Tick#tick{count = C + 1, timers = [{TRef, Id} | L]}},
                    refs := Refs1}};
        #{} ->
            {new_tick, T#{ticks := Ticks#{Deadline => #tick{count = 1, timers = [{TRef, Id}]}},
                          refs := Refs1}}
    end.

%% @doc Records the Erlang timer armed for a tick.
-spec set_tick_timer(integer(), reference(), t()) -> t().
set_tick_timer(Deadline, ErlRef, #{ticks := Ticks} = T) ->
    Tick = maps:get(Deadline, Ticks),
    T#{ticks := Ticks#{Deadline := Tick#tick{erlang_timer = ErlRef}}}.

%% @doc Cancels a pending timer. `{cancelled, ErlangTimerToCancel | none, T}' when it was
%% pending (the Erlang timer is returned when its tick has no timers left), or
%% `{not_found, T}'.
-spec cancel(reference(), t()) -> {cancelled, reference() | none, t()} | {not_found, t()}.
cancel(TRef, #{ticks := Ticks, refs := Refs} = T) ->
    case maps:take(TRef, Refs) of
        error ->
            {not_found, T};
        {Deadline, Refs1} ->
            case maps:get(Deadline, Ticks) of
                #tick{count = 1, erlang_timer = ErlRef} ->
                    {cancelled, none_if_undefined(ErlRef),
                     T#{ticks := maps:remove(Deadline, Ticks), refs := Refs1}};
                #tick{count = C} = Tick ->
                    {cancelled, none,
                     T#{ticks := Ticks#{Deadline := Tick#tick{count = C - 1}}, refs := Refs1}}
            end
    end.

%% @doc The timers of a tick that fired, in start order, as `[{TRef, Id}]'.
-spec take_tick(integer(), t()) -> {[{reference(), term()}], t()}.
take_tick(Deadline, #{ticks := Ticks, refs := Refs} = T) ->
    case maps:take(Deadline, Ticks) of
        error ->
            {[], T};
        {#tick{timers = Timers}, Ticks1} ->
            Due = [E || {TRef, _} = E <- lists:reverse(Timers), is_map_key(TRef, Refs)],
            {Due, T#{ticks := Ticks1, refs := maps:without([R || {R, _} <- Due], Refs)}}
    end.

%% @doc Pending timers.
-spec size(t()) -> non_neg_integer().
size(#{refs := Refs}) ->
    map_size(Refs).

none_if_undefined(undefined) -> none;
none_if_undefined(Ref) -> Ref.
