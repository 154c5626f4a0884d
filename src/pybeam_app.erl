%% @doc The pybeam application: starts the embedded interpreter, then the supervisor
%% that owns the default loops.
-module(pybeam_app).
-behaviour(application).

-export([start/2, stop/1, interpreter_config/0]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    py_callback_id:ensure(),
    case py_nif:init_python(interpreter_config()) of
        ok -> pybeam_sup:start_link();
        {error, Reason} -> {error, {python_init_failed, Reason}};
        {badarg, Reason} -> {error, {bad_config, Reason}}
    end.

-spec stop(term()) -> ok.
stop(_State) ->
    py_loops:clear().

%% @doc The interpreter settings taken from the application environment.
-spec interpreter_config() -> #{python_path := [binary()], venv := binary() | undefined,
                                none_as := none | undefined | nil}.
interpreter_config() ->
    UserPath = [unicode:characters_to_binary(P) || P <- application:get_env(pybeam, python_path, [])],
    Venv = case application:get_env(pybeam, venv, undefined) of
               undefined -> undefined;
               V -> unicode:characters_to_binary(V)
           end,
    #{python_path => [priv_python_dir() | UserPath],
      venv => Venv,
      none_as => application:get_env(pybeam, none_as, none)}.

priv_python_dir() ->
    unicode:characters_to_binary(filename:join(py_nif:priv_dir(), "python")).
