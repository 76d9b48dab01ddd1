-- declared: a test's conditional write (tests/test_broker.py) that hands back the KEYS it was given.
-- include: move, conditional
-- KEYS[1..] keys: the guarded pairs (a key the writes need of one type, its aside), the keys the
--   condition reads, every other key the writes name (broker.conditional)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] layout: the counts and types of broker.conditional; the condition's arguments; the writes
-- Returns: {1, what the guard moved, KEYS}.
return conditional(KEYS, ARGV, function(r, c)
  return true, KEYS
end)
