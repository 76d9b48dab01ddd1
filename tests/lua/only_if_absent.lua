-- only_if_absent: a test's conditional write (tests/test_broker.py): applied only if c[1] does not
-- exist; hands back the value of c[2] either way.
-- include: move, conditional
-- KEYS[1..] guarded: pairs of a key the writes need of one type and its aside (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] layout: the types of the guarded keys; 2, c[1] and c[2]; then the writes
-- Returns: {1 or 0 (applied), what the guard moved, {GET c[2]}}.
return conditional(KEYS, ARGV, function(c)
  return redis.call('EXISTS', c[1]) == 0, {redis.call('GET', c[2])}
end)
