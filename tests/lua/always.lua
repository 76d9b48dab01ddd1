-- always: a test's conditional write whose condition always holds (tests/test_full_disk.py).
-- include: move, conditional
-- KEYS[1..] guarded: pairs of a key the writes need of one type and its aside (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] layout: the types of the guarded keys; 0 (no condition arguments); then the writes
-- Returns: {1, what the guard moved, {}}.
return conditional(KEYS, ARGV, function(c)
  return true
end)
