-- The raw message (the bytes the publisher wrote) out of an ``unacked`` entry: the pop
-- script stores '[' .. raw .. ',' .. ex .. ',' .. rk .. ']'; re-encoding would change
-- the bytes (cjson's number and escaping rules), so the raw text is cut out instead.
local function raw_message(entry)
  local ok, decoded = pcall(cjson.decode, entry)
  if not ok or type(decoded) ~= 'table' then return nil end
  local tail = ',' .. cjson.encode(decoded[2] or '') .. ','
      .. cjson.encode(decoded[3] or '') .. ']'
  if string.sub(entry, 1, 1) == '[' and string.sub(entry, -#tail) == tail then
    return string.sub(entry, 2, #entry - #tail)
  end
  return cjson.encode(decoded[1])
end
