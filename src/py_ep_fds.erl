%% @doc Readiness of caller-owned fds, for the event process.
%%
%% Each direction of a watched fd is one-shot (`enif_select'): its readiness message goes
%% to the event process, which queues `{CallbackId, read | write}'. The fd is re-armed when
%% a poller comes back after that event was delivered, not when it is queued or handed
%% over: until the poller has acted on it, the fd would only report the same readiness
%% again. The fd is never closed here; when both directions are removed the watch is
%% stopped.
-module(py_ep_fds).

-export([new/0, add/5, remove/3, ready/4, rearm/2, stop_all/1, size/1]).

-record(dir, {id :: term(), serial :: non_neg_integer(), state :: armed | pending | dead}).
-record(fd, {watch :: term(), read :: #dir{} | undefined, write :: #dir{} | undefined}).

-opaque t() :: #{integer() => #fd{}}.
-export_type([t/0]).

-type dir() :: read | write.

-spec new() -> t().
new() ->
    #{}.

%% @doc Watches `Fd' for `Dir' on behalf of callback `Id'.
-spec add(integer(), dir(), term(), non_neg_integer(), t()) ->
    {ok, t()} | {error, badfd | already_registered}.
add(Fd, Dir, Id, Serial, Fds) ->
    case watch_of(Fd, Fds) of
        {error, _} = Error ->
            Error;
        {ok, #fd{} = Entry} ->
            case get_dir(Dir, Entry) of
                undefined ->
                    case py_nif:fd_select(Entry#fd.watch, Dir, msg(Fd, Dir, Serial)) of
                        ok ->
                            D = #dir{id = Id, serial = Serial, state = armed},
                            {ok, Fds#{Fd => set_dir(Dir, D, Entry)}};
                        {error, badfd} ->
                            forget_if_unused(Entry),
                            {error, badfd}
                    end;
                #dir{} ->
                    {error, already_registered}
            end
    end.

watch_of(Fd, Fds) ->
    case Fds of
        #{Fd := Entry} ->
            {ok, Entry};
        #{} ->
            case py_nif:fd_watch(Fd) of
                {ok, Watch} -> {ok, #fd{watch = Watch}};
                {error, _} = Error -> Error
            end
    end.

forget_if_unused(#fd{read = undefined, write = undefined, watch = W}) ->
    py_nif:fd_stop(W);
forget_if_unused(_Entry) ->
    ok.

%% @doc Stops watching `Fd' for `Dir'. Returns the callback id, and whether its readiness
%% event is queued and not yet delivered (the event process then drops it).
-spec remove(integer(), dir(), t()) -> {ok, term(), boolean(), t()} | {error, not_registered}.
remove(Fd, Dir, Fds) ->
    case Fds of
        #{Fd := Entry} ->
            case get_dir(Dir, Entry) of
                undefined ->
                    {error, not_registered};
                #dir{id = Id, state = State} ->
                    ok = py_nif:fd_cancel(Entry#fd.watch, Dir),
                    Entry1 = set_dir(Dir, undefined, Entry),
                    Fds1 = case Entry1 of
                               #fd{read = undefined, write = undefined, watch = W} ->
                                   ok = py_nif:fd_stop(W),
                                   maps:remove(Fd, Fds);
                               _ ->
                                   Fds#{Fd := Entry1}
                           end,
                    {ok, Id, State =:= pending, Fds1}
            end;
        #{} ->
            {error, not_registered}
    end.

%% @doc A readiness message arrived. `{event, Event, T}' to queue, or `{stale, T}' for a
%% message of a registration that has since been removed or replaced.
-spec ready(integer(), dir(), non_neg_integer(), t()) -> {event, tuple(), t()} | {stale, t()}.
ready(Fd, Dir, Serial, Fds) ->
    case Fds of
        #{Fd := Entry} ->
            case get_dir(Dir, Entry) of
                #dir{serial = Serial, state = armed, id = Id} = D ->
                    {event, {Id, Dir}, Fds#{Fd := set_dir(Dir, D#dir{state = pending}, Entry)}};
                _ ->
                    {stale, Fds}
            end;
        #{} ->
            {stale, Fds}
    end.

%% @doc Re-arms every direction whose event was delivered, in one NIF call. A direction
%% whose fd can no longer be selected (closed by its owner) goes quiet instead.
-spec rearm([{integer(), dir()}], t()) -> t().
rearm(Delivered, Fds) ->
    case lists:foldl(fun due/2, {[], Fds}, Delivered) of
        {[], Fds1} ->
            Fds1;
        {Due, Fds1} ->
            Calls = lists:reverse(Due),
            Results = py_nif:fd_select_all([{W, Dir, msg(Fd, Dir, Serial)} || {Fd, Dir, W, Serial} <- Calls]),
            quiet_failed(Calls, Results, Fds1)
    end.

%% A pending direction is marked armed as it is collected, so a direction listed twice is
%% selected once.
due({Fd, Dir}, {Due, Fds}) ->
    case Fds of
        #{Fd := Entry} ->
            case get_dir(Dir, Entry) of
                #dir{state = pending, serial = Serial} = D ->
                    {[{Fd, Dir, Entry#fd.watch, Serial} | Due],
                     Fds#{Fd := set_dir(Dir, D#dir{state = armed}, Entry)}};
                _ ->
                    {Due, Fds}
            end;
        #{} ->
            {Due, Fds}
    end.

quiet_failed([_ | Calls], [ok | Results], Fds) ->
    quiet_failed(Calls, Results, Fds);
quiet_failed([{Fd, Dir, _, _} | Calls], [{error, badfd} | Results], Fds) ->
    #{Fd := Entry} = Fds,
    D = get_dir(Dir, Entry),
    quiet_failed(Calls, Results, Fds#{Fd := set_dir(Dir, D#dir{state = dead}, Entry)});
quiet_failed([], [], Fds) ->
    Fds.

%% @doc Ends every watch; the caller's fds stay open.
-spec stop_all(t()) -> ok.
stop_all(Fds) ->
    maps:foreach(fun(_Fd, #fd{watch = W}) -> py_nif:fd_stop(W) end, Fds).

%% @doc Watched fds.
-spec size(t()) -> non_neg_integer().
size(Fds) ->
    map_size(Fds).

msg(Fd, Dir, Serial) ->
    {'$py_fd', Fd, Dir, Serial}.

get_dir(read, #fd{read = D}) -> D;
get_dir(write, #fd{write = D}) -> D.

set_dir(read, D, Entry) -> Entry#fd{read = D};
set_dir(write, D, Entry) -> Entry#fd{write = D}.
