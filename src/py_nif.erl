%% @doc The NIF surface. Internal: use {@link py} and {@link py_event_loop_v2}.
%% Every function here is replaced when `priv/py_nif.so' loads.
-module(py_nif).

-export([priv_dir/0]).
-export([init_python/1, python_info/0,
         loop_new/2, submit/4, submit_dirty/4, cancel/2, loop_close/1, loop_stats/1,
         reaper_pending/0, noop/0, noop_dirty/0]).

-on_load(load/0).

-nifs([init_python/1, python_info/0,
       loop_new/2, submit/4, submit_dirty/4, cancel/2, loop_close/1, loop_stats/1,
       reaper_pending/0, noop/0, noop_dirty/0]).

-type loop() :: reference().
-export_type([loop/0]).

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

-spec submit(loop(), pos_integer(), reference(), tuple()) ->
    ok | dirty | {error, term()} | {badarg, string()}.
submit(_Loop, _Id, _Alias, _Job) -> ?NOT_LOADED.

-spec submit_dirty(loop(), pos_integer(), reference(), tuple()) ->
    ok | {error, term()} | {badarg, string()}.
submit_dirty(_Loop, _Id, _Alias, _Job) -> ?NOT_LOADED.

-spec cancel(loop(), pos_integer()) -> ok.
cancel(_Loop, _Id) -> ?NOT_LOADED.

-spec loop_close(loop()) -> ok.
loop_close(_Loop) -> ?NOT_LOADED.

-spec loop_stats(loop()) -> #{queued := non_neg_integer(), running := non_neg_integer(),
                              completed := non_neg_integer(), batches := non_neg_integer(),
                              skipped := non_neg_integer(), closed := boolean()}.
loop_stats(_Loop) -> ?NOT_LOADED.

%% @doc Large Python results released by Erlang and not yet freed under the GIL.
-spec reaper_pending() -> non_neg_integer().
reaper_pending() -> ?NOT_LOADED.

-spec noop() -> ok.
noop() -> ?NOT_LOADED.

-spec noop_dirty() -> ok.
noop_dirty() -> ?NOT_LOADED.
