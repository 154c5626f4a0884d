%% @doc Child processes owned by an event process.
%%
%% A child is spawned natively (see `pybeam_core::child'): its stdout, stderr and stdin
%% pipes and its pidfd are watched through the same `enif_select' machinery as any fd, with
%% messages `{'$py_child', Id, Stream}'. Output becomes `{Id, subprocess_stdout, Data}' and
%% `{Id, subprocess_stderr, Data}' events, in order; the exit becomes
%% `{Id, subprocess_exit, ReturnCode}' (minus the signal number if it was killed), always
%% after the last output chunk. docs/event-loop.md says why this and not an Erlang port.
-module(py_ep_children).

-export([new/0, spawn/4, ready/3, kill/3, stop_all/1, size/1]).

%% Reads per readiness message, so that a chatty child cannot monopolise the process.
-define(READS_PER_WAKEUP, 16).
-define(CHUNK, 65536).

-record(child, {
    os_pid :: integer(),
    pidfd :: term(),
    stdin :: {term(), binary()} | undefined,
    stdout :: term() | undefined,
    stderr :: term() | undefined,
    %% the return code, once the child has exited
    status :: integer() | undefined
}).

-opaque t() :: #{term() => #child{}}.
-export_type([t/0]).

-type event() :: {term(), subprocess_stdout | subprocess_stderr | subprocess_exit, term()}.

-spec new() -> t().
new() ->
    #{}.

%% @doc Starts `Argv' for callback `Id'. Options: `stdin' (`null' or `{data, iodata()}',
%% written then closed), `stderr' (`pipe', `stdout' or `null'), `cwd', `env'
%% (`[<<"NAME=value">>]', replacing the environment).
-spec spawn(term(), [iodata()], map(), t()) ->
    {ok, integer(), t()} | {error, term()} | {badarg, binary()}.
spawn(Id, _Argv, _Opts, Children) when is_map_key(Id, Children) ->
    {error, already_registered};
spawn(Id, Argv, Opts, Children) ->
    case stdin(maps:get(stdin, Opts, null)) of
        {ok, Stdin, Data} -> spawn(Id, Argv, Opts, Stdin, Data, Children);
        error -> {badarg, <<"stdin must be null or {data, iodata()}">>}
    end.

stdin(null) ->
    {ok, null, <<>>};
stdin({data, D}) ->
    try iolist_to_binary(D) of
        Data -> {ok, pipe, Data}
    catch
        error:badarg -> error
    end;
stdin(_) ->
    error.

spawn(Id, Argv, Opts, Stdin, Data, Children) ->
    NativeOpts = maps:merge(maps:with([cwd, env], Opts),
                            #{stdin => Stdin, stdout => pipe, stderr => maps:get(stderr, Opts, pipe)}),
    case py_nif:spawn_child(Argv, NativeOpts) of
        {ok, OsPid, Pidfd, StdinW, StdoutW, StderrW} ->
            ok = py_nif:fd_select(Pidfd, read, {'$py_child', Id, exit}),
            [ok = py_nif:fd_select(W, read, {'$py_child', Id, S})
             || {S, W} <- [{stdout, StdoutW}, {stderr, StderrW}], W =/= undefined],
            StdinState = case StdinW of
                             undefined -> undefined;
                             _ ->
                                 ok = py_nif:fd_select(StdinW, write, {'$py_child', Id, stdin}),
                                 {StdinW, Data}
                         end,
            Child = #child{os_pid = OsPid, pidfd = Pidfd, stdin = StdinState,
                           stdout = StdoutW, stderr = StderrW},
            {ok, OsPid, Children#{Id => Child}};
        {badarg, Why} ->
            {badarg, Why};
        {error, _} = Error ->
            Error
    end.

%% @doc A watched stream of child `Id' is ready.
-spec ready(term(), stdout | stderr | stdin | exit, t()) -> {[event()], t()}.
ready(Id, Stream, Children) ->
    case Children of
        #{Id := Child} -> ready_child(Id, Stream, Child, Children);
        #{} -> {[], Children}
    end.

ready_child(Id, exit, #child{pidfd = Pidfd} = Child, Children) ->
    case py_nif:child_wait(Pidfd) of
        running ->
            ok = py_nif:fd_select(Pidfd, read, {'$py_child', Id, exit}),
            {[], Children};
        Status ->
            ok = py_nif:fd_stop(Pidfd),
            finish(Id, Child#child{status = returncode(Status)}, [], Children)
    end;
ready_child(Id, stdin, #child{stdin = {W, Data}} = Child, Children) ->
    case py_nif:fd_write(W, Data) of
        {ok, N} when N =:= byte_size(Data) ->
            ok = py_nif:fd_stop(W),
            {[], Children#{Id := Child#child{stdin = undefined}}};
        {ok, N} ->
            ok = py_nif:fd_select(W, write, {'$py_child', Id, stdin}),
            Rest = binary:part(Data, N, byte_size(Data) - N),
            {[], Children#{Id := Child#child{stdin = {W, Rest}}}};
        eagain ->
            ok = py_nif:fd_select(W, write, {'$py_child', Id, stdin}),
            {[], Children};
        {error, _} ->
            %% The child closed its stdin (EPIPE): nothing more to write.
            ok = py_nif:fd_stop(W),
            {[], Children#{Id := Child#child{stdin = undefined}}}
    end;
ready_child(Id, Stream, Child, Children) when Stream =:= stdout; Stream =:= stderr ->
    W = stream(Stream, Child),
    Kind = case Stream of stdout -> subprocess_stdout; stderr -> subprocess_stderr end,
    case read_chunks(W, ?READS_PER_WAKEUP, []) of
        {more, Chunks} ->
            ok = py_nif:fd_select(W, read, {'$py_child', Id, Stream}),
            {[{Id, Kind, C} || C <- Chunks], Children};
        {eof, Chunks} ->
            ok = py_nif:fd_stop(W),
            finish(Id, set_stream(Stream, undefined, Child), [{Id, Kind, C} || C <- Chunks], Children)
    end;
ready_child(_Id, _Stream, _Child, Children) ->
    {[], Children}.

read_chunks(_W, 0, Acc) ->
    {more, lists:reverse(Acc)};
read_chunks(W, N, Acc) ->
    case py_nif:fd_read(W, ?CHUNK) of
        {ok, Data} -> read_chunks(W, N - 1, [Data | Acc]);
        eagain -> {more, lists:reverse(Acc)};
        eof -> {eof, lists:reverse(Acc)};
        {error, _} -> {eof, lists:reverse(Acc)}
    end.

%% The exit event comes after the last output: only once both pipes reached EOF.
finish(Id, #child{status = Code, stdout = undefined, stderr = undefined}, Events, Children)
  when is_integer(Code) ->
    {Events ++ [{Id, subprocess_exit, Code}], maps:remove(Id, Children)};
finish(Id, Child, Events, Children) ->
    {Events, Children#{Id := Child}}.

%% @doc Sends `Signal' to child `Id'.
-spec kill(term(), term(), t()) -> ok | {error, term()}.
kill(_Id, Signal, _Children) when not is_integer(Signal); Signal < 1; Signal > 16#7fffffff ->
    %% kill(2) takes a C int; anything else is no signal at all.
    {error, einval};
kill(Id, Signal, Children) ->
    case Children of
        #{Id := #child{status = undefined, pidfd = Pidfd}} -> py_nif:child_kill(Pidfd, Signal);
        #{Id := _} -> {error, esrch};
        #{} -> {error, not_registered}
    end.

%% @doc Kills every child still running and releases all their fds (the loop is going).
-spec stop_all(t()) -> ok.
stop_all(Children) ->
    maps:foreach(
      fun(_Id, #child{pidfd = Pidfd, stdin = Stdin, stdout = Out, stderr = Err}) ->
              [ok = py_nif:fd_stop(W) || W <- [stdin_watch(Stdin), Out, Err], W =/= undefined],
              %% Stopping the pidfd's watch kills a running child and collects it, on the
              %% reaper thread; a child that already exited was stopped then.
              ok = py_nif:fd_stop(Pidfd)
      end, Children).

%% @doc Children not yet finished.
-spec size(t()) -> non_neg_integer().
size(Children) ->
    map_size(Children).

returncode({exited, Code}) -> Code;
returncode({signaled, Signal}) -> -Signal;
returncode({error, _}) -> 255.

stream(stdout, #child{stdout = W}) -> W;
stream(stderr, #child{stderr = W}) -> W.

set_stream(stdout, W, Child) -> Child#child{stdout = W};
set_stream(stderr, W, Child) -> Child#child{stderr = W}.

stdin_watch({W, _}) -> W;
stdin_watch(undefined) -> undefined.
