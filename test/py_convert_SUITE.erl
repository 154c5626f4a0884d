%% Each row of the conversion table (docs/type-conversion.md), Erlang -> Python -> Erlang.
-module(py_convert_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

all() ->
    [integers_of_any_size, floats_and_non_finite, booleans, none_atoms,
     none_as_is_configurable, other_atoms_become_erlang_atom, unicode_atoms,
     python_text_never_creates_atoms, utf8_binaries_are_str, non_utf8_binaries_are_bytes,
     explicit_bytes, large_binaries_roundtrip, lists_tuples_maps, charlists_stay_lists,
     colliding_dict_keys, pids_and_refs_roundtrip, sets_become_lists,
     unsupported_python_types].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(pybeam),
    Config.

end_per_suite(_Config) ->
    ok.

%% The value as Python sees it, and what comes back.
identity(V) -> py:eval(<<"x">>, #{x => V}).
py_type(V) -> {ok, T} = py:eval(<<"type(x).__module__ + '.' + type(x).__qualname__">>, #{x => V}), T.

integers_of_any_size(_Config) ->
    Ints = [0, 1, -1, 1 bsl 59, 1 bsl 63 - 1, -(1 bsl 63), 1 bsl 63, 1 bsl 64,
            -(1 bsl 100), binary_to_integer(binary:copy(<<"9">>, 500))],
    [?assertEqual({ok, I}, identity(I)) || I <- Ints],
    [?assertEqual(<<"builtins.int">>, py_type(I)) || I <- Ints],
    ?assertEqual({ok, 1 bsl 200}, py:eval(<<"2 ** 200">>)),
    ?assertEqual({ok, -(1 bsl 200) + 1}, py:eval(<<"-(2 ** 200) + 1">>)).

floats_and_non_finite(_Config) ->
    [?assertEqual({ok, F}, identity(F)) || F <- [0.0, -1.5, 1.0e300, 5.0e-324]],
    ?assertEqual({ok, [true, true, true]},
                 py:eval(<<"[x != x, x2 == float('inf'), x3 == float('-inf')]">>,
                         #{x => nan, x2 => infinity, x3 => neg_infinity})),
    ?assertEqual({ok, [nan, infinity, neg_infinity]},
                 py:eval(<<"[float('nan'), float('inf'), float('-inf')]">>)),
    ?assertEqual({ok, [nan, infinity, neg_infinity]}, identity([nan, infinity, neg_infinity])).

booleans(_Config) ->
    ?assertEqual({ok, [true, false]}, identity([true, false])),
    ?assertEqual(<<"builtins.bool">>, py_type(true)),
    ?assertEqual({ok, true}, py:eval(<<"1 == 1">>)).

none_atoms(_Config) ->
    [?assertEqual(<<"builtins.NoneType">>, py_type(A)) || A <- [undefined, none, nil]],
    ?assertEqual({ok, [none, none, none]}, identity([undefined, none, nil])).

none_as_is_configurable(_Config) ->
    try
        [begin
             ok = application:set_env(pybeam, none_as, As),
             ok = application:stop(pybeam),
             {ok, _} = application:ensure_all_started(pybeam),
             ?assertEqual({ok, As}, py:eval(<<"None">>))
         end || As <- [undefined, nil, none]]
    after
        application:unset_env(pybeam, none_as)
    end.

other_atoms_become_erlang_atom(_Config) ->
    ?assertEqual(<<"erlang.Atom">>, py_type(hello)),
    ?assertEqual({ok, true}, py:eval(<<"isinstance(x, str) and x == 'hello'">>, #{x => hello})),
    ?assertEqual({ok, hello}, identity(hello)),
    %% Plain strings stay binaries; only Atom instances go back to atoms.
    ?assertEqual({ok, <<"hello">>}, py:eval(<<"str(x)">>, #{x => hello})),
    ?assertEqual({ok, ok}, py:eval(<<"__import__('erlang').Atom('ok')">>)).

unicode_atoms(_Config) ->
    A = binary_to_atom(<<"λ_ünïcode"/utf8>>, utf8),
    ?assertEqual({ok, <<"λ_ünïcode"/utf8>>}, py:eval(<<"str(x)">>, #{x => A})),
    ?assertEqual({ok, A}, identity(A)).

python_text_never_creates_atoms(_Config) ->
    Before = erlang:system_info(atom_count),
    Name = <<"pybeam_never_an_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    ?assertEqual({ok, Name}, py:eval(<<"__import__('erlang').Atom(n)">>, #{n => Name})),
    ?assertEqual({ok, #{Name => 1}}, py:eval(<<"{__import__('erlang').Atom(n): 1}">>, #{n => Name})),
    ?assertEqual(Before, erlang:system_info(atom_count)).

utf8_binaries_are_str(_Config) ->
    B = <<"héllo wörld ☃"/utf8>>,
    ?assertEqual(<<"builtins.str">>, py_type(B)),
    ?assertEqual({ok, B}, identity(B)),
    ?assertEqual({ok, 13}, py:call(builtins, len, [B])),
    ?assertEqual({ok, <<>>}, identity(<<>>)).

non_utf8_binaries_are_bytes(_Config) ->
    B = <<255, 0, 128, 1>>,
    ?assertEqual(<<"builtins.bytes">>, py_type(B)),
    ?assertEqual({ok, B}, identity(B)),
    ?assertEqual({ok, 4}, py:call(builtins, len, [B])).

explicit_bytes(_Config) ->
    ?assertEqual(<<"builtins.bytes">>, py_type({bytes, <<"text">>})),
    ?assertEqual({ok, <<"text">>}, identity({bytes, <<"text">>})),
    ?assertEqual({ok, <<"xy">>}, py:eval(<<"bytearray(b'xy')">>)),
    %% A tuple that only looks similar stays a tuple.
    ?assertEqual(<<"builtins.tuple">>, py_type({bytes, not_a_binary})).

large_binaries_roundtrip(_Config) ->
    Utf8 = binary:copy(<<"é☃x"/utf8>>, 200000),
    Raw = list_to_binary([I rem 256 || I <- lists:seq(1, 1000000)]),
    ?assertEqual({ok, Utf8}, identity(Utf8)),
    ?assertEqual({ok, Raw}, identity(Raw)),
    ?assertEqual({ok, Raw}, identity({bytes, Raw})).

lists_tuples_maps(_Config) ->
    V = #{<<"list">> => [1, 2.5, <<"s">>, [], [[]]],
          tuple => {1, {2, {}}, [a]},
          1 => #{nested => #{deeper => true}},
          {compound, key} => <<"v">>},
    ?assertEqual({ok, V}, identity(V)),
    ?assertEqual(<<"builtins.dict">>, py_type(#{})),
    ?assertEqual(<<"builtins.tuple">>, py_type({})),
    ?assertEqual(<<"builtins.list">>, py_type([])).

charlists_stay_lists(_Config) ->
    ?assertEqual({ok, "abc"}, identity("abc")),
    ?assertEqual({ok, [97, 98, 99]}, py:eval(<<"[ord(c) for c in 'abc']">>)).

colliding_dict_keys(_Config) ->
    %% Distinct Python keys can meet as one Erlang key; the later one wins.
    ?assertEqual({ok, #{<<"a">> => 2}}, py:eval(<<"{'a': 1, b'a': 2}">>)).

pids_and_refs_roundtrip(_Config) ->
    Pid = self(),
    Ref = make_ref(),
    ?assertEqual({ok, {Pid, Ref}}, identity({Pid, Ref})),
    ?assertEqual(<<"erlang.Pid">>, py_type(Pid)),
    ?assertEqual(<<"erlang.Ref">>, py_type(Ref)),
    ?assertEqual({ok, [true, false]}, py:eval(<<"[a == b, a == c]">>,
                                              #{a => Pid, b => Pid, c => spawn(fun() -> ok end)})),
    ?assertEqual({ok, 1}, py:eval(<<"len({a, b})">>, #{a => Ref, b => Ref})).

sets_become_lists(_Config) ->
    {ok, L} = py:eval(<<"{1, 2, 3}">>),
    ?assertEqual([1, 2, 3], lists:sort(L)),
    ?assertEqual({ok, []}, py:eval(<<"frozenset()">>)).

unsupported_python_types(_Config) ->
    ?assertEqual({error, {unsupported_type, <<"object">>}}, py:eval(<<"object()">>)),
    ?assertEqual({error, {unsupported_type, <<"decimal.Decimal">>}},
                 py:eval(<<"__import__('decimal').Decimal('1.5')">>)),
    ?assertEqual({error, {unsupported_type, <<"builtin_function_or_method">>}},
                 py:eval(<<"[len]">>)).
