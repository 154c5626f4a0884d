%% @doc The NIF surface. Internal: use {@link py} and {@link py_event_loop_v2}.
%% Every function here is replaced when `priv/py_nif.so' loads.
-module(py_nif).

-export([priv_dir/0]).
-export([init_python/1, python_info/0,
         loop_new/2, submit/4, submit_dirty/4, cancel/2, loop_close/1, loop_stats/1,
         reaper_pending/0, noop/0, noop_dirty/0]).
-export([submit_many/2, submit_many_dirty/2, deliver_events/2, link_failed/2]).
-export([stream_credit/3, callback_reply/2, callback_reply_dirty/2, register_name/2,
         callback_expire/1, callback_worker_idle/1, callback_worker_next/1,
         callback_worker_retire/1]).
-export([fd_watch/1, fd_select/3, fd_select_all/1, fd_cancel/2, fd_stop/1,
         fd_read/2, fd_write/2, spawn_child/2, child_wait/1, child_kill/2]).

-on_load(load/0).

-nifs([init_python/1, python_info/0,
       loop_new/2, submit/4, submit_dirty/4, cancel/2, loop_close/1, loop_stats/1,
       reaper_pending/0, noop/0, noop_dirty/0, submit_many/2, submit_many_dirty/2,
       deliver_events/2, link_failed/2,
       stream_credit/3, callback_reply/2, callback_reply_dirty/2, register_name/2,
       callback_expire/1, callback_worker_idle/1, callback_worker_next/1, callback_worker_retire/1,
       fd_watch/1, fd_select/3, fd_select_all/1, fd_cancel/2, fd_stop/1,
       fd_read/2, fd_write/2, spawn_child/2, child_wait/1, child_kill/2]).

-type loop() :: reference().
%% An fd under enif_select: a caller's fd (never closed here), a pipe of ours, or a pidfd.
-type watch() :: reference().
-export_type([loop/0, watch/0]).

load() ->
    erlang:load_nif(filename:join(priv_dir(), "py_nif"), 0).

%% @doc The application's priv directory, also when it is not installed as an OTP release.
-spec priv_dir() -> file:filename().
priv_dir() ->
    case code:priv_dir(pybeam) of
        {error, bad_name} ->
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

-define(NOT_LOADED, erlang:nif_error({not_loaded, ?MODULE})).

%% @doc Initialises the interpreter once; later calls only add `sys.path' entries.
-spec init_python(map()) -> ok | {error, binary()} | {badarg, string()}.
init_python(_Config) -> ?NOT_LOADED.

-spec python_info() -> #{home := binary(), executable := binary(),
                         build_version := binary(), version := binary()}.
python_info() -> ?NOT_LOADED.

-spec loop_new(pid(), map()) -> {ok, loop()} | {error, term()}.
loop_new(_EventProc, _Opts) -> ?NOT_LOADED.

%% `ReplyTo' is the caller's alias, or `event' for the loop's event queue (the result then
%% becomes a `call_result' or `call_error' event named by `Id').
-spec submit(loop(), pos_integer(), reference() | event, tuple()) ->
    ok | dirty | {error, term()} | {badarg, binary()}.
submit(_Loop, _Id, _Alias, _Job) -> ?NOT_LOADED.

-spec submit_dirty(loop(), pos_integer(), reference() | event, tuple()) ->
    ok | {error, term()} | {badarg, binary()}.
submit_dirty(_Loop, _Id, _Alias, _Job) -> ?NOT_LOADED.

%% @doc Submits many requests in one call: all are queued, in order, or none.
-spec submit_many(loop(), [{pos_integer(), reference() | event, tuple()}]) ->
    ok | dirty | {error, term()} | {badarg, binary()}.
submit_many(_Loop, _Requests) -> ?NOT_LOADED.

-spec submit_many_dirty(loop(), [{pos_integer(), reference() | event, tuple()}]) ->
    ok | {error, term()} | {badarg, binary()}.
submit_many_dirty(_Loop, _Requests) -> ?NOT_LOADED.

%% @doc What the event process has for the loop's asyncio loop, in one call: fd readiness
%% `{Fd, read | write}', `{failed, Fd, read | write}', or `wakeup'.
-spec deliver_events(loop(), [{integer(), read | write} | {failed, integer(), read | write} | wakeup]) ->
    ok | {badarg, binary()}.
deliver_events(_Loop, _Events) -> ?NOT_LOADED.

%% @doc The event process Python code asked for (token) could not be made.
-spec link_failed(pos_integer(), binary()) -> ok.
link_failed(_Token, _Reason) -> ?NOT_LOADED.

%% @doc Lets stream `Id' send `N' more items.
-spec stream_credit(loop(), pos_integer(), pos_integer()) -> ok.
stream_credit(_Loop, _Id, _N) -> ?NOT_LOADED.

%% @doc The answer of the Erlang function that Python call `Token' ran: `stale' when
%% nobody waits for it any more (the call timed out).
-spec callback_reply(non_neg_integer(), {ok, term()} | {error, term()}) ->
    ok | stale | dirty | {error, term()} | {badarg, binary()}.
callback_reply(_Token, _Reply) -> ?NOT_LOADED.

-spec callback_reply_dirty(non_neg_integer(), {ok, term()} | {error, term()}) ->
    ok | stale | {error, term()} | {badarg, binary()}.
callback_reply_dirty(_Token, _Reply) -> ?NOT_LOADED.

%% @doc Answers call `Token' `{error, timeout}' if it still waits; true if it did.
-spec callback_expire(non_neg_integer()) -> boolean().
callback_expire(_Token) -> ?NOT_LOADED.

%% @doc Worker `Pid' waits for its next call; returns its ticket for
%% {@link callback_worker_next/1}.
-spec callback_worker_idle(pid()) -> pos_integer().
callback_worker_idle(_Pid) -> ?NOT_LOADED.

%% @doc Whether the worker that got `Ticket' is still the one the next call goes to.
-spec callback_worker_next(pos_integer()) -> boolean().
callback_worker_next(_Ticket) -> ?NOT_LOADED.

%% @doc Worker `Pid' stops waiting: true if no call can reach it any more, false if one is
%% on its way.
-spec callback_worker_retire(pid()) -> boolean().
callback_worker_retire(_Pid) -> ?NOT_LOADED.

%% @doc Marks a name as registered (or not) for `from erlang import Name'.
-spec register_name(binary(), boolean()) -> ok.
register_name(_Name, _Registered) -> ?NOT_LOADED.

-spec cancel(loop(), pos_integer()) -> ok.
cancel(_Loop, _Id) -> ?NOT_LOADED.

-spec loop_close(loop()) -> ok.
loop_close(_Loop) -> ?NOT_LOADED.

-spec loop_stats(loop()) -> #{queued := non_neg_integer(), running := non_neg_integer(),
                              completed := non_neg_integer(), batches := non_neg_integer(),
                              skipped := non_neg_integer(), closed := boolean(),
                              tasks := non_neg_integer(), tasks_waiting := non_neg_integer()}.
loop_stats(_Loop) -> ?NOT_LOADED.

%% @doc Large Python results released by Erlang and not yet freed under the GIL.
-spec reaper_pending() -> non_neg_integer().
reaper_pending() -> ?NOT_LOADED.

-spec noop() -> ok.
noop() -> ?NOT_LOADED.

-spec noop_dirty() -> ok.
noop_dirty() -> ?NOT_LOADED.

%% @doc A watch on a caller's fd (validated: it must be open, and watched by no one else).
-spec fd_watch(integer()) -> {ok, watch()} | {error, badfd | already_registered}.
fd_watch(_Fd) -> ?NOT_LOADED.

%% @doc One-shot readiness: `Msg' is sent to the calling process when the fd is ready.
-spec fd_select(watch(), read | write, term()) -> ok | {error, badfd}.
fd_select(_Watch, _Dir, _Msg) -> ?NOT_LOADED.

%% @doc `fd_select/3' for each item, in order, in one call.
-spec fd_select_all([{watch(), read | write, term()}]) -> [ok | {error, badfd}] | {badarg, binary()}.
fd_select_all(_Items) -> ?NOT_LOADED.

%% @doc Drops a pending one-shot readiness.
-spec fd_cancel(watch(), read | write) -> ok.
fd_cancel(_Watch, _Dir) -> ?NOT_LOADED.

%% @doc Ends a watch; the fd is released by its kind (a caller's fd stays open).
-spec fd_stop(watch()) -> ok.
fd_stop(_Watch) -> ?NOT_LOADED.

%% @doc Reads up to `Max' bytes from a non-blocking fd of ours.
-spec fd_read(watch(), pos_integer()) -> {ok, binary()} | eof | eagain | {error, term()}.
fd_read(_Watch, _Max) -> ?NOT_LOADED.

%% @doc Writes to a non-blocking fd of ours.
-spec fd_write(watch(), binary()) -> {ok, non_neg_integer()} | eagain | {error, term()}.
fd_write(_Watch, _Data) -> ?NOT_LOADED.

%% @doc Starts a child process (see `pybeam_core::child'): its pidfd and pipes come back as
%% watches.
-spec spawn_child([iodata()], map()) ->
    {ok, integer(), watch(), watch() | undefined, watch() | undefined, watch() | undefined}
    | {error, term()} | {badarg, binary()}.
spawn_child(_Argv, _Opts) -> ?NOT_LOADED.

%% @doc The exit status of a child, without blocking.
-spec child_wait(watch()) -> running | {exited, integer()} | {signaled, integer()} | {error, term()}.
child_wait(_Pidfd) -> ?NOT_LOADED.

%% @doc Sends a signal to a child through its pidfd.
-spec child_kill(watch(), integer()) -> ok | {error, term()}.
child_kill(_Pidfd, _Signal) -> ?NOT_LOADED.
