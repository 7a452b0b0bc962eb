"""Retell ``call_ended`` / ``call_analyzed`` bodies of a realistic long call, for size tests.

Shape: the call object of Retell's SDK (RetellAI/retell-python-sdk,
``src/retell/types/phone_call_response.py``): ``transcript`` (``"Agent: …\\nUser: …"``),
``transcript_object`` (utterances ``{role, content, words: [{word, start, end}]}``, times
in seconds of call audio), ``transcript_with_tool_calls`` (the same utterances, with their
words, interleaved with ``tool_call_invocation`` / ``tool_call_result`` entries), with PII
scrubbing on also ``scrubbed_transcript_with_tool_calls`` (a third copy), ``latency``
(per-turn ``values`` lists), ``call_cost``, ``call_analysis`` on ``call_analyzed``.

Speech: two parties at about 150 words a minute together, one turn every ~12 words,
a tool call every ~40 turns. Seeded, so every run builds the same bytes.

``python -m tests.long_calls`` prints the sizes the README quotes.
"""

from __future__ import annotations

import json
import random
from typing import Any

WORDS = (
    "yes I would like to book an appointment for next Tuesday morning please "
    "could you check whether Doctor Schneider has time around nine or ten o'clock "
    "of course let me look that up for you one moment the earliest slot is "
    "Wednesday at eleven thirty would that work for you otherwise Thursday afternoon "
    "my phone number is zero one five one two three four five six seven eight "
    "thank you very much that's perfect I'll send a confirmation by text message"
).split()
WORDS_PER_MINUTE = 150
WORDS_PER_TURN = 12
TURNS_PER_TOOL_CALL = 40


def call_object(
    call_id: str, minutes: float, *, scrubbed: bool = False, analyzed: bool = False
) -> dict[str, Any]:
    """The call object of a ``minutes``-long inbound call (see the module docstring)."""
    rng = random.Random(f"{call_id}:{minutes}")
    utterances, with_tools, lines = [], [], []
    clock, turn, total = 0.6, 0, int(minutes * WORDS_PER_MINUTE)
    spoken = 0
    while spoken < total:
        role = "agent" if turn % 2 == 0 else "user"
        count = max(1, min(total - spoken, int(rng.gauss(WORDS_PER_TURN, 4))))
        words = []
        for _ in range(count):
            length = rng.uniform(0.18, 0.55)
            words.append(
                {
                    "word": rng.choice(WORDS),
                    "start": round(clock, 3),
                    "end": round(clock + length, 3),
                }
            )
            clock += length + rng.uniform(0.02, 0.12)
        content = " ".join(w["word"] for w in words)
        utterance = {"role": role, "content": content, "words": words}
        utterances.append(utterance)
        with_tools.append(utterance)
        lines.append(f"{role.capitalize()}: {content}")
        if turn % TURNS_PER_TOOL_CALL == TURNS_PER_TOOL_CALL - 1:
            tool_id = f"tool_{turn:05d}"
            with_tools.append(
                {
                    "role": "tool_call_invocation",
                    "tool_call_id": tool_id,
                    "name": "check_availability",
                    "arguments": json.dumps({"date": "2026-12-01", "staff": "Schneider"}),
                }
            )
            with_tools.append(
                {
                    "role": "tool_call_result",
                    "tool_call_id": tool_id,
                    "content": json.dumps({"slots": ["09:00", "10:30", "11:30", "14:00"]}),
                }
            )
        clock += rng.uniform(0.4, 1.5)
        spoken += count
        turn += 1
    start_ms = 1764061200000
    duration_ms = int(clock * 1000)
    turns = [round(rng.uniform(600, 1400), 1) for _ in range(turn // 2)]
    call: dict[str, Any] = {
        "call_type": "phone_call",
        "call_id": call_id,
        "agent_id": "agent_5f1e0d2c3b4a59687766554433",
        "agent_version": 3,
        "call_status": "ended",
        "direction": "inbound",
        "from_number": "+4915112345678",
        "to_number": "+4930901820",
        "start_timestamp": start_ms,
        "end_timestamp": start_ms + duration_ms,
        "duration_ms": duration_ms,
        "disconnection_reason": "user_hangup",
        "transcript": "\n".join(lines) + "\n",
        "transcript_object": utterances,
        "transcript_with_tool_calls": with_tools,
        "recording_url": f"https://dxc03zgurdly9.cloudfront.net/{call_id}/recording.wav",
        "public_log_url": f"https://dxc03zgurdly9.cloudfront.net/{call_id}/public.log",
        "latency": {
            name: {
                "p50": 800.0,
                "p90": 1200.0,
                "p95": 1300.0,
                "p99": 1390.0,
                "max": 1400.0,
                "min": 600.0,
                "num": len(turns),
                "values": turns,
            }
            for name in ("e2e", "llm", "tts")
        },
        "call_cost": {
            "combined_cost": round(minutes * 7.0, 2),
            "product_costs": [{"product": "retell_platform", "unit_price": 0.117, "cost": 1.0}],
            "total_duration_seconds": duration_ms // 1000,
            "total_duration_unit_price": 0.117,
        },
        "opt_out_sensitive_data_storage": False,
        "metadata": {},
        "retell_llm_dynamic_variables": {"customer_name": "Jürgen"},
    }
    if scrubbed:
        call["scrubbed_transcript_with_tool_calls"] = with_tools
    if analyzed:
        call["call_analysis"] = {
            "call_summary": "The caller booked an appointment with Doctor Schneider.",
            "in_voicemail": False,
            "user_sentiment": "Positive",
            "call_successful": True,
            "custom_analysis_data": {},
        }
    return call


def call_body(
    call_id: str, minutes: float, event: str = "call_analyzed", *, scrubbed: bool = False
) -> bytes:
    """The body Retell sends (compact JSON, as Node's JSON.stringify writes it)."""
    call = call_object(call_id, minutes, scrubbed=scrubbed, analyzed=event == "call_analyzed")
    return json.dumps({"event": event, "call": call}, separators=(",", ":")).encode()


if __name__ == "__main__":
    for minutes in (4, 55, 120):
        for scrubbed in (False, True):
            size = len(call_body("call_measure", minutes, scrubbed=scrubbed))
            print(f"{minutes:>4} min scrubbed={scrubbed!s:<5} {size:>9} B ({size / 2**20:.2f} MiB)")
