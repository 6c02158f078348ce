#!/usr/bin/env bash
# Regenerates the spoken Hebrew test clips in tools/sandbox/fixtures/audio/ and tools/sandbox/fixtures/clips.json.
# Each clip is raw μ-law, 8000 Hz, mono, no header (what Twilio sends), trimmed of leading and
# trailing silence so it starts and ends with speech. Needs espeak-ng and sox
# (apt-get install -y espeak-ng sox). The committed clips are what the tests use; a different
# espeak-ng version produces different bytes, which is fine since clips.json is rewritten too.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/tools/sandbox/fixtures/audio"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# name|transcript
clips=(
  "appointment|שלום, אני רוצה לקבוע תור"
  "hours|מה שעות הפתיחה שלכם"
  "goodbye|תודה רבה, להתראות"
  "tomorrow|כן, מחר בבוקר"
)

json="{"
sep=""
for entry in "${clips[@]}"; do
  name="${entry%%|*}"
  text="${entry#*|}"
  espeak-ng -v he -s 165 -w "$tmp/$name.wav" "$text"
  # -D: no dither, so the output is deterministic for a given espeak-ng build.
  # silence/reverse/silence/reverse trims silence at both ends.
  sox -D "$tmp/$name.wav" -r 8000 -c 1 -e mu-law -t raw "$out/$name.ulaw" \
    silence 1 0.02 1% reverse silence 1 0.02 1% reverse
  bytes=$(stat -c %s "$out/$name.ulaw")
  ms=$((bytes / 8))
  if ((ms < 1000 || ms > 2500)); then
    echo "make_fixtures: clip $name is $ms ms, outside 1000..2500 ms" >&2
    exit 1
  fi
  json+="$sep\n  \"$name.ulaw\": \"$text\""
  sep=","
done
json+="\n}\n"
printf "%b" "$json" >"$root/tools/sandbox/fixtures/clips.json"
echo "make_fixtures: wrote ${#clips[@]} clips to $out"
