/**
 * JSON Schema checks with `npm:ajv` (draft 2020-12 subset ajv's default class supports): the
 * config compiles each tool's `parameters` at load, the agent checks the model's arguments with
 * the same compiled validator before a tool request is sent.
 */
import { Ajv } from "ajv";

/** Checks a value; null when it is valid, else the problems as one line. */
export type SchemaCheck = (value: unknown) => string | null;

/**
 * Compiles `schema`. Unknown keywords are refused (a typo such as "requried" would otherwise check
 * nothing); throws `TypeError` with ajv's reason when the schema itself is invalid.
 */
export function compileSchema(schema: Readonly<Record<string, unknown>>): SchemaCheck {
  const ajv = new Ajv({
    allErrors: true,
    strictSchema: true,
    strictTypes: false,
    strictTuples: false,
    strictRequired: false,
    logger: false,
  });
  let validate;
  try {
    validate = ajv.compile(schema);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new TypeError(reason);
  }
  return (value) => {
    if (validate(value)) return null;
    return ajv.errorsText(validate.errors, { dataVar: "arguments" });
  };
}
