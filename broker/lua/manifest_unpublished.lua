-- manifest_unpublished: the files source's writes of an object's version, applied only if that
-- version is not published already (broker.conditional, sources.files.manifest). A manifest of another
-- type holds nothing: the writes move it aside.
-- include: move, conditional
-- KEYS[1..] guarded: pairs of a key the writes need of one type and its aside (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] layout: the type of each guarded key (one per pair); then 3 and the condition's c[1]: the
--   bucket's manifest (a hash), c[2]: the object's key, c[3]: "SIZE:MTIME_NS:" of its version; then
--   each write as its number of words and its words
-- Returns: {1 or 0 (applied), what the guard moved, {}}.
return conditional(KEYS, ARGV, function(c)
  if redis.call('TYPE', c[1]).ok ~= 'hash' then return true end
  local entry = redis.call('HGET', c[1], c[2])
  return not entry or string.sub(entry, 1, #c[3]) ~= c[3]
end)
