%% @doc Top supervisor: `py_loop_sup' for loops created at runtime, `py_loop_manager'
%% (event processes for loops made by Python code; owner of the streams table),
%% `py_callbacks' (Erlang functions called from Python), then one child per
%% default loop (its event process, which owns the native loop and its thread). A dead
%% default event process is restarted with a fresh loop.
-module(pybeam_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    N = max(1, application:get_env(pybeam, num_loops, 1)),
    py_loops:init(N),
    Loops = [#{id => {default_loop, I},
               start => {py_event_proc, start_link, [#{default_index => I}]},
               restart => permanent,
               shutdown => 5000,
               type => worker,
               modules => [py_event_proc]}
             || I <- lists:seq(1, N)],
    LoopSup = #{id => py_loop_sup,
                start => {py_loop_sup, start_link, []},
                type => supervisor,
                modules => [py_loop_sup]},
    Manager = #{id => py_loop_manager,
                start => {py_loop_manager, start_link, []},
                modules => [py_loop_manager]},
    Callbacks = #{id => py_callbacks,
                  start => {py_callbacks, start_link, []},
                  modules => [py_callbacks]},
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10},
          [LoopSup, Manager, Callbacks | Loops]}}.
