-module(py_loops_tests).
-include_lib("eunit/include/eunit.hrl").

fnv1a_known_vectors_test() ->
    ?assertEqual(16#cbf29ce484222325, py_loops:fnv1a(<<>>)),
    ?assertEqual(16#af63dc4c8601ec8c, py_loops:fnv1a(<<"a">>)),
    ?assertEqual(16#85944171f73967e8, py_loops:fnv1a(<<"foobar">>)).

fnv1a_of_terms_uses_external_format_test() ->
    ?assertEqual(py_loops:fnv1a(term_to_binary({user, 42})), py_loops:fnv1a({user, 42})).

explicit_handle_is_used_as_is_test() ->
    Handle = {make_ref(), self()},
    ?assertEqual({ok, Handle}, py_loops:pick(Handle)).

keys_always_reach_the_same_loop_test_() ->
    {setup,
     fun() -> py_loops:init(4),
              [py_loops:register_default(I, make_ref(), self()) || I <- lists:seq(1, 4)] end,
     fun(_) -> py_loops:clear() end,
     fun(_) ->
         Picks = [begin {ok, H} = py_loops:pick({key, K}), {K, H} end || K <- lists:seq(1, 200)],
         Again = [begin {ok, H} = py_loops:pick({key, K}), {K, H} end || K <- lists:seq(1, 200)],
         Used = lists:usort([H || {_, H} <- Picks]),
         [?_assertEqual(Picks, Again),
          ?_assertEqual(4, length(Used)),
          ?_assertEqual(4, length(py_loops:default_loops()))]
     end}.

not_started_test() ->
    py_loops:clear(),
    ?assertEqual({error, not_started}, py_loops:pick(default)),
    ?assertEqual({error, not_started}, py_loops:pick(some_key)).
