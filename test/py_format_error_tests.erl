-module(py_format_error_tests).
-include_lib("eunit/include/eunit.hrl").

%% The shell prints these for a badarg raised by py.
describes_each_cause_test_() ->
    Causes = [{module, 1}, {function, 1}, {args, x}, {kwargs, x}, {locals, x}, {code, 1},
              {opts, x}, {timeout, -1}, <<"args must be a proper list">>],
    [?_assertMatch(#{general := <<_, _/binary>>},
                   py:format_error(badarg, [{py, call, [], [{error_info, #{cause => C}}]}]))
     || C <- Causes].

args_cause_text_test() ->
    #{general := Text} = py:format_error(badarg, [{py, call, [], [{error_info, #{cause => {args, foo}}}]}]),
    ?assertEqual(<<"args must be a list, got: foo">>, Text).
