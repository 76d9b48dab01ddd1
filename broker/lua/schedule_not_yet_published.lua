-- schedule_not_yet_published: a schedule's tick and its writes, applied only if the schedule's key
-- holds an earlier tick, nothing, or something that is not a tick (broker.conditional,
-- broker.schedules; the guard moves a key of another type aside before the writes).
-- include: move, conditional
-- KEYS[1..] keys: the guarded pairs (a key the writes need of one type, its aside), the keys the
--   condition reads, every other key the writes name (broker.conditional)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] layout: the counts and types of broker.conditional; the key read, r[1]: the schedule's
--   key; then 1 and the condition's c[1]: the tick (seconds since the epoch); then each write as its
--   number of words and its words
-- Returns: {1 or 0 (applied), what the guard moved, {} or {the tick already published}}.
return conditional(KEYS, ARGV, function(r, c)
  local last = redis.pcall('GET', r[1])
  if type(last) == 'string' and tonumber(last) and tonumber(last) >= tonumber(c[1]) then
    return false, {last}
  end
  return true
end)
