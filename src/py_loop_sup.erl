%% @doc Supervises the loops created at runtime with `py_event_loop_v2:new/0,1'. They are
%% temporary: a loop that dies (or is destroyed, or loses its owner) is not restarted.
-module(py_loop_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Loop = #{id => loop,
             start => {py_event_proc, start_link, []},
             restart => temporary,
             shutdown => 5000,
             type => worker,
             modules => [py_event_proc]},
    {ok, {#{strategy => simple_one_for_one, intensity => 100, period => 1}, [Loop]}}.
