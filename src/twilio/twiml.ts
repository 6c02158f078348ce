/**
 * TwiML documents Kav answers the Voice URL with (twilio-media-streams.md section 4). The text
 * starts with `<?xml`: whitespace before it is error 12100.
 */

/** The `<Parameter>` Kav's `/webhook/dial_ended` TwiML adds when it connects a caller back. */
export const DIAL_STATUS_PARAMETER = "KavDialStatus";

/** Twilio: a `<Parameter>`'s name and value together must be under 500 characters. */
export const MAX_PARAMETER_CHARS = 500;

/** Where Kav's routes live under the public URL. */
export const ROUTES = {
  twiml: "/twiml",
  media: "/ws/twilio-media",
  streamStatus: "/webhook/stream_status",
  streamEnded: "/webhook/stream_ended",
  dialEnded: "/webhook/dial_ended",
} as const;

// XML 1.0 forbids these code points even when escaped; dropping them keeps the document parseable.
const INVALID_XML_CHARS =
  // deno-lint-ignore no-control-regex -- matching control characters is the point here
  /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

const ESCAPES: Readonly<Record<string, string>> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&apos;",
  // Attribute-value normalization would turn raw tabs and newlines into spaces.
  "\t": "&#9;",
  "\n": "&#10;",
  "\r": "&#13;",
};

/** Escapes `value` for a double-quoted XML attribute or text node. */
export function escapeXml(value: string): string {
  return value.replace(INVALID_XML_CHARS, "").replace(/[&<>"'\t\n\r]/g, (c) => ESCAPES[c]);
}

/** Whether a `<Parameter>` with this name and value is within Twilio's limit. */
export function parameterFits(name: string, value: string): boolean {
  return name.length + value.length < MAX_PARAMETER_CHARS;
}

/** `https://host` → `wss://host`, `http://host` → `ws://host` (local testing only). */
export function toWebSocketUrl(publicUrl: string): string {
  return publicUrl.replace(/^http(s?):/i, (_, s: string) => `ws${s.toLowerCase()}:`);
}

/**
 * `<Connect action=…/webhook/stream_ended><Stream url=wss://…/ws/twilio-media
 * statusCallback=…/webhook/stream_status>` with one `<Parameter>` per entry. `publicUrl` has no
 * trailing slash. Throws RangeError when a parameter is over Twilio's limit.
 */
export function connectStreamTwiml(options: {
  readonly publicUrl: string;
  readonly parameters: ReadonlyArray<readonly [string, string]>;
}): string {
  const { publicUrl } = options;
  let parameters = "";
  for (const [name, value] of options.parameters) {
    if (!parameterFits(name, value)) {
      throw new RangeError(
        `Cannot add TwiML parameter ${JSON.stringify(name)}: name and value are ${
          name.length + value.length
        } characters, the limit is ${MAX_PARAMETER_CHARS - 1}`,
      );
    }
    parameters += `<Parameter name="${escapeXml(name)}" value="${escapeXml(value)}"/>`;
  }
  const action = escapeXml(publicUrl + ROUTES.streamEnded);
  const url = escapeXml(toWebSocketUrl(publicUrl) + ROUTES.media);
  const status = escapeXml(publicUrl + ROUTES.streamStatus);
  return `<?xml version="1.0" encoding="UTF-8"?>` +
    `<Response><Connect action="${action}">` +
    `<Stream url="${url}" statusCallback="${status}">${parameters}</Stream>` +
    `</Connect></Response>`;
}

/**
 * Refuses a call Kav cannot take (over `server.max_calls`, or draining): the caller hears a busy
 * tone and, since the call was never answered, nothing is billed.
 */
export function busyTwiml(): string {
  return `<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>`;
}

/**
 * The `<Connect action>` answer for a call the agent transferred (SPEC 6): dial the department's
 * number (E.164, as `<Dial>`'s text) or SIP URI (`<Sip>`), the caller hearing ringing until it is
 * answered (`answerOnBridge`); Twilio reports the outcome to `/webhook/dial_ended`.
 */
export function dialTwiml(
  options: { readonly publicUrl: string; readonly target: string },
): string {
  const action = escapeXml(options.publicUrl + ROUTES.dialEnded);
  const target = escapeXml(options.target);
  const body = /^sips?:/i.test(options.target) ? `<Sip>${target}</Sip>` : target;
  return `<?xml version="1.0" encoding="UTF-8"?>` +
    `<Response><Dial action="${action}" answerOnBridge="true">${body}</Dial></Response>`;
}

/** Ends the call: the agent hung up, or a transfer's dial completed. */
export function hangupTwiml(): string {
  return `<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>`;
}
