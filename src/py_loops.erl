%% @doc The default loops and how a request picks one: unkeyed requests spread by the
%% caller's scheduler, keyed ones go to `FNV-1a(Key) mod N', so one key always reaches
%% the same loop. The table lives in `persistent_term' and changes only when a loop
%% (re)starts.
-module(py_loops).

-export([init/1, clear/0, register_default/3, pick/1, default_loops/0, fnv1a/1]).

-define(KEY, {pybeam, default_loops}).

-type handle() :: {py_nif:loop(), pid()}.
-export_type([handle/0]).

%% @doc Sizes the table for `N' loops, all absent.
-spec init(pos_integer()) -> ok.
init(N) ->
    persistent_term:put(?KEY, erlang:make_tuple(N, undefined)).

%% @doc Forgets the default loops (the application stopped): calls answer `not_started'.
-spec clear() -> ok.
clear() ->
    _ = persistent_term:erase(?KEY),
    ok.

%% @doc Records the loop at `Index' (1-based); called by its event process on start.
-spec register_default(pos_integer(), py_nif:loop(), pid()) -> ok.
register_default(Index, Loop, EventProc) ->
    Loops = persistent_term:get(?KEY),
    persistent_term:put(?KEY, setelement(Index, Loops, {Loop, EventProc})).

%% @doc All default loops, in index order.
-spec default_loops() -> [handle()].
default_loops() ->
    [L || L <- tuple_to_list(persistent_term:get(?KEY, {})), L =/= undefined].

%% @doc The loop for a request: `default', an explicit `{Loop, EventProc}', or a key.
-spec pick(default | handle() | term()) -> {ok, handle()} | {error, not_started}.
pick({Loop, EventProc} = Handle) when is_reference(Loop), is_pid(EventProc) ->
    {ok, Handle};
pick(Key) ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> {error, not_started};
        {L} -> present(L);
        Loops when Key =:= default ->
            present(element(erlang:system_info(scheduler_id) rem tuple_size(Loops) + 1, Loops));
        Loops ->
            present(element(fnv1a(Key) rem tuple_size(Loops) + 1, Loops))
    end.

present(undefined) -> {error, not_started};
present(Handle) -> {ok, Handle}.

%% @doc 64-bit FNV-1a of a binary, or of any other term's external format.
-spec fnv1a(term()) -> non_neg_integer().
fnv1a(Bin) when is_binary(Bin) ->
    fnv1a(Bin, 16#cbf29ce484222325);
fnv1a(Term) ->
    fnv1a(term_to_binary(Term)).

fnv1a(<<B, Rest/binary>>, H) ->
    fnv1a(Rest, ((H bxor B) * 16#100000001b3) band 16#ffffffffffffffff);
fnv1a(<<>>, H) ->
    H.
