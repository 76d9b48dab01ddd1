-- only_if_absent: a test's conditional write (tests/test_broker.py): applied only if the key r[1]
-- does not exist; hands back the value of the key r[2] either way.
-- include: move, conditional
-- KEYS[1..] keys: the guarded pairs (a key the writes need of one type, its aside), the keys the
--   condition reads, every other key the writes name (broker.conditional)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] layout: the counts and types of broker.conditional; 0; then the writes
-- Returns: {1 or 0 (applied), what the guard moved, {GET r[2]}}.
return conditional(KEYS, ARGV, function(r, c)
  return redis.call('EXISTS', r[1]) == 0, {redis.call('GET', r[2])}
end)
