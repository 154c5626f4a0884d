%% `make bench': each workload runs RUNS times beside its baselines, measured in the same
%% run; the table and bench/results/latest.json report medians across runs.
-module(pybeam_bench).

-export([main/1]).

-define(RUNS, 5).

main(Args) ->
    Out = case Args of [File | _] -> File; [] -> "bench/results/latest.json" end,
    {ok, _} = application:ensure_all_started(pybeam),
    Groups = [sync_call()],
    Results = [run_group(G) || G <- Groups],
    Json = #{<<"runs">> => ?RUNS,
             <<"machine">> => machine(),
             <<"groups">> => Results},
    ok = filelib:ensure_dir(Out),
    ok = file:write_file(Out, json(Json)),
    io:format("~nwrote ~s~n", [Out]),
    halt(0).

%% A group: workloads measured in the same run, and targets checked against them.
%% Workload: {Name, Callers, TotalOps, Fun} where Fun() performs one operation.
sync_call() ->
    Sqrt = fun() -> {ok, 4.0} = py:call(math, sqrt, [16.0]) end,
    DirtyNoop = fun() -> ok = py_nif:noop_dirty() end,
    Echo = spawn_link(fun echo/0),
    PingPong = fun() -> Ref = make_ref(), Echo ! {self(), Ref}, receive {Ref, pong} -> ok end end,
    Workloads = lists:append(
        [[{name("py:call(math, sqrt, [16.0])", C), C, Ops, Sqrt},
          {name("baseline: no-op dirty NIF", C), C, Ops, DirtyNoop},
          {name("baseline: Erlang message round trip", C), C, Ops, PingPong}]
         || {C, Ops} <- [{1, 100000}, {8, 200000}, {64, 320000}]]),
    Targets = fun(M) ->
        Seq = rate(M, name("py:call(math, sqrt, [16.0])", 1)),
        Dirty = rate(M, name("baseline: no-op dirty NIF", 1)),
        C64 = rate(M, name("py:call(math, sqrt, [16.0])", 64)),
        [target("sequential py:call >= 150,000 calls/s", Seq, 150000),
         target("sequential py:call >= 2x no-op dirty NIF (ratio)", Seq / Dirty, 2.0),
         target("64 callers py:call >= 500,000 calls/s", C64, 500000)]
    end,
    {<<"sync_call">>, Workloads, Targets}.

name(What, Callers) ->
    iolist_to_binary(io_lib:format("~s, ~b caller~s", [What, Callers, plural(Callers)])).

plural(1) -> "";
plural(_) -> "s".

echo() ->
    receive {From, Ref} -> From ! {Ref, pong}, echo() end.

run_group({Group, Workloads, Targets}) ->
    io:format("~n== ~s (median of ~b runs; rates in ops/s, latencies in us)~n", [Group, ?RUNS]),
    io:format("~-58s ~12s ~9s ~9s~n", ["workload", "rate", "p50", "p99"]),
    %% Interleave the workloads run by run, so that machine noise hits them alike.
    _Warmup = [measure(C, min(Ops, 20000), F) || {_, C, Ops, F} <- Workloads],
    Runs = [[measure(C, Ops, F) || {_, C, Ops, F} <- Workloads] || _ <- lists:seq(1, ?RUNS)],
    PerWorkload = transpose(Runs),
    Medians = [begin
                   M = #{<<"name">> => Name, <<"callers">> => C,
                         <<"rate">> => median([R || #{rate := R} <- Samples]),
                         <<"p50_us">> => median([P || #{p50 := P} <- Samples]),
                         <<"p99_us">> => median([P || #{p99 := P} <- Samples]),
                         <<"rate_samples">> => [round(R) || #{rate := R} <- Samples]},
                   io:format("~-58s ~12b ~9.1f ~9.1f~n",
                             [Name, round(maps:get(<<"rate">>, M)), maps:get(<<"p50_us">>, M),
                              maps:get(<<"p99_us">>, M)]),
                   M
               end || {{Name, C, _, _}, Samples} <- lists:zip(Workloads, PerWorkload)],
    Checked = Targets(Medians),
    [io:format("  target ~-55s ~s (measured ~.2f)~n",
               [T, case Met of true -> "MET"; false -> "MISSED" end, V])
     || #{<<"target">> := T, <<"met">> := Met, <<"measured">> := V} <- Checked],
    #{<<"group">> => Group, <<"workloads">> => Medians, <<"targets">> => Checked}.

%% Runs Ops operations spread over Callers processes; every operation is timed.
measure(Callers, Ops, Fun) ->
    Self = self(),
    PerCaller = max(1, Ops div Callers),
    T0 = erlang:monotonic_time(),
    Pids = [spawn_link(fun() -> Self ! {lat, self(), timed(Fun, PerCaller, [])} end)
            || _ <- lists:seq(1, Callers)],
    Lats = lists:append([receive {lat, P, L} -> L end || P <- Pids]),
    Elapsed = erlang:convert_time_unit(erlang:monotonic_time() - T0, native, nanosecond),
    Sorted = lists:sort(Lats),
    N = length(Sorted),
    #{rate => N / (Elapsed / 1.0e9),
      p50 => lists:nth(max(1, round(N * 0.50)), Sorted) / 1000,
      p99 => lists:nth(max(1, round(N * 0.99)), Sorted) / 1000}.

timed(_Fun, 0, Acc) ->
    Acc;
timed(Fun, N, Acc) ->
    T0 = erlang:monotonic_time(nanosecond),
    Fun(),
    timed(Fun, N - 1, [erlang:monotonic_time(nanosecond) - T0 | Acc]).

rate(Medians, Name) ->
    hd([R || #{<<"name">> := N, <<"rate">> := R} <- Medians, N =:= Name]).

target(What, Measured, Goal) ->
    #{<<"target">> => list_to_binary(What), <<"measured">> => Measured * 1.0,
      <<"goal">> => Goal, <<"met">> => Measured >= Goal}.

transpose([[] | _]) -> [];
transpose(Rows) -> [[hd(R) || R <- Rows] | transpose([tl(R) || R <- Rows])].

median(L) ->
    S = lists:sort(L),
    lists:nth((length(S) + 1) div 2, S).

machine() ->
    #{<<"otp">> => list_to_binary(erlang:system_info(otp_release)),
      <<"schedulers">> => erlang:system_info(schedulers_online),
      <<"cores">> => erlang:system_info(logical_processors_available),
      <<"python">> => maps:get(version, py_nif:python_info())}.

%% A small JSON encoder: OTP 25 has none.
json(M) when is_map(M) ->
    ["{", lists:join(",", [[json(K), ":", json(V)] || {K, V} <- lists:sort(maps:to_list(M))]), "}"];
json(L) when is_list(L) -> ["[", lists:join(",", [json(V) || V <- L]), "]"];
json(B) when is_binary(B) -> [$", escape(B), $"];
json(true) -> "true";
json(false) -> "false";
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(I) when is_integer(I) -> integer_to_list(I);
json(F) when is_float(F) -> float_to_list(F, [{decimals, 3}, compact]).

escape(B) ->
    [case C of $" -> "\\\""; $\\ -> "\\\\"; $\n -> "\\n"; _ when C < 32 -> io_lib:format("\\u~4.16.0b", [C]); _ -> C end
     || <<C/utf8>> <= B].
