-- manifest_unpublished: the files source's writes of an object's version, applied only if that
-- version is not published already (broker.conditional, sources.files.manifest). A manifest of another
-- type holds nothing: the writes move it aside.
-- include: move, conditional
-- KEYS[1..] keys: the guarded pairs (a key the writes need of one type, its aside), the keys the
--   condition reads, every other key the writes name (broker.conditional)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] layout: the counts and types of broker.conditional; the key read, r[1]: the bucket's
--   manifest (a hash); then 2 and the condition's c[1]: the object's key, c[2]: "SIZE:MTIME_NS:" of
--   its version; then each write as its number of words and its words
-- Returns: {1 or 0 (applied), what the guard moved, {}}.
return conditional(KEYS, ARGV, function(r, c)
  if redis.call('TYPE', r[1]).ok ~= 'hash' then return true end
  local entry = redis.call('HGET', r[1], c[1])
  return not entry or string.sub(entry, 1, #c[2]) ~= c[2]
end)
