%% @doc Sockets handed to an event process (it is their controlling process).
%%
%% Their native messages become events: `{tcp, S, Data}' and `{udp, S, Ip, Port, Data}'
%% become `{Id, socket_data, Data}' (for UDP the payload is `{Ip, Port, Data}'),
%% `{tcp_closed, S}' becomes `{Id, socket_closed, closed}', `{tcp_error, S, Reason}' becomes
%% `{Id, socket_error, Reason}'. Sockets run in `{active, N}' mode, re-armed on
%% `{tcp_passive, S}', so a fast peer cannot flood the event process. Messages that arrive
%% before the socket is registered (moved over by `controlling_process') are kept and
%% replayed on registration.
-module(py_ep_sockets).

-export([new/0, watch/3, handle/2, close_all/1, size/1]).

-define(ACTIVE_N, 64).

-opaque t() :: #{ids := #{port() => term()}, early := #{port() => [tuple()]}}.
-export_type([t/0]).

-type event() :: {term(), socket_data | socket_closed | socket_error, term()}.

-spec new() -> t().
new() ->
    #{ids => #{}, early => #{}}.

%% @doc Registers `Socket' (already handed over to the calling event process) for `Id'.
-spec watch(port(), term(), t()) -> {ok, [event()], t()} | {error, term()}.
watch(Socket, Id, #{ids := Ids, early := Early} = T) ->
    case is_map_key(Socket, Ids) of
        true ->
            {error, already_registered};
        false ->
            case inet:setopts(Socket, [{active, ?ACTIVE_N}]) of
                ok ->
                    T1 = T#{ids := Ids#{Socket => Id}, early := maps:remove(Socket, Early)},
                    replay(lists:reverse(maps:get(Socket, Early, [])), [], T1);
                {error, _} = Error ->
                    Error
            end
    end.

replay([Msg | Rest], Acc, T) ->
    case handle(Msg, T) of
        {event, Event} -> replay(Rest, [Event | Acc], T);
        {event, Event, T1} -> replay(Rest, [Event | Acc], T1);
        {none, T1} -> replay(Rest, Acc, T1)
    end;
replay([], Acc, T) ->
    {ok, lists:reverse(Acc), T}.

%% @doc Turns a socket message into at most one event: `{event, E}' when the registry is
%% unchanged (data, the frequent case: the caller keeps its state as it is), `{event, E,
%% T}' when it changed, `{none, T}' when there is no event; `not_socket' if it is not one.
-spec handle(tuple(), t()) -> {event, event()} | {event, event(), t()} | {none, t()} | not_socket.
handle({tcp, S, Data}, T) -> data(S, Data, T, {tcp, S, Data});
handle({udp, S, Ip, Port, Data} = M, T) -> data(S, {Ip, Port, Data}, T, M);
handle({tcp_passive, S} = M, T) -> passive(S, T, M);
handle({udp_passive, S} = M, T) -> passive(S, T, M);
handle({tcp_closed, S} = M, T) -> gone(S, socket_closed, closed, T, M);
handle({tcp_error, S, Reason} = M, T) -> gone(S, socket_error, Reason, T, M);
handle({udp_error, S, Reason} = M, T) -> event(S, socket_error, Reason, T, M);
handle(_, _T) -> not_socket.

data(S, Payload, T, Msg) ->
    event(S, socket_data, Payload, T, Msg).

event(S, Kind, Payload, #{ids := Ids} = T, Msg) ->
    case Ids of
        #{S := Id} -> {event, {Id, Kind, Payload}};
        #{} -> {none, keep_early(S, Msg, T)}
    end.

passive(S, #{ids := Ids} = T, Msg) ->
    case Ids of
        #{S := _} ->
            _ = inet:setopts(S, [{active, ?ACTIVE_N}]),
            {none, T};
        #{} ->
            {none, keep_early(S, Msg, T)}
    end.

gone(S, Kind, Payload, #{ids := Ids} = T, Msg) ->
    case Ids of
        #{S := Id} -> {event, {Id, Kind, Payload}, T#{ids := maps:remove(S, Ids)}};
        #{} -> {none, keep_early(S, Msg, T)}
    end.

keep_early(S, Msg, #{early := Early} = T) ->
    T#{early := Early#{S => [Msg | maps:get(S, Early, [])]}}.

%% @doc Closes every registered socket (the loop is going).
-spec close_all(t()) -> ok.
close_all(#{ids := Ids, early := Early}) ->
    _ = [catch gen_tcp:close(S) || S <- maps:keys(Ids) ++ maps:keys(Early)],
    ok.

%% @doc Registered sockets.
-spec size(t()) -> non_neg_integer().
size(#{ids := Ids}) ->
    map_size(Ids).
