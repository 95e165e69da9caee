-- gpufleet gateway: copy the token counts of vLLM's `usage` block into HAProxy variables,
-- so the per-request log line carries them (txn.in_tok, txn.out_tok).
--
-- vLLM puts `usage` at the end of a JSON response, and in the last SSE chunk of a stream
-- when the request asks for it (stream_options.include_usage) or the server runs with
-- --enable-force-include-usage. So the filter keeps only the last TAIL bytes of the response
-- body as it streams through (it never holds data back: each callback lets all of it pass)
-- and reads the last "prompt_tokens" / "completion_tokens" pair from them at the end.
-- A "prompt_tokens" inside generated text is JSON-escaped (\"prompt_tokens\") and does not
-- match; "prompt_tokens_details" does not match either.

local TAIL = 4096

local Usage = {}
Usage.id = "gpufleet usage"
Usage.flags = filter.FLT_CFG_FL_HTX
Usage.__index = Usage

function Usage:new()
  local f = {}
  setmetatable(f, Usage)
  f.tail = ""
  return f
end

function Usage:start_analyze(txn, chn)
  if chn:is_resp() then
    filter.register_data_filter(self, chn)
  end
  return filter.CONTINUE
end

function Usage:http_payload(txn, msg)
  local body = msg:body()
  if body ~= nil and #body > 0 then
    local t = self.tail .. body
    if #t > TAIL then
      t = string.sub(t, -TAIL)
    end
    self.tail = t
  end
  -- returning nothing forwards everything that arrived: tokens reach the client at once
end

function Usage:http_end(txn, msg)
  if not msg.channel:is_resp() then
    return filter.CONTINUE
  end
  local p, c
  for v in string.gmatch(self.tail, '"prompt_tokens"%s*:%s*(%d+)') do p = v end
  for v in string.gmatch(self.tail, '"completion_tokens"%s*:%s*(%d+)') do c = v end
  if p then txn:set_var("txn.in_tok", tonumber(p)) end
  if c then txn:set_var("txn.out_tok", tonumber(c)) end
  return filter.CONTINUE
end

core.register_filter("usage", Usage, function(f, args) return f end)
