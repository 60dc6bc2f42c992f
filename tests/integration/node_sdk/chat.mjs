// Drives the openai package for Node.js against a mesh-llm node; prints one JSON line of
// what it saw, for tests/integration/test_conformance_frameworks.py to assert on.
// usage: node chat.mjs BASE_URL MODEL
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });
const messages = [{ role: "user", content: "Say hello in one short sentence." }];

const models = await client.models.list();
const plain = await client.chat.completions.create({
  model, messages, max_tokens: 16, temperature: 0,
});
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 16, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
const pieces = [];
let finish = null;
let usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    if (choice.delta?.content) pieces.push(choice.delta.content);
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
let notFound = null;
try {
  await client.chat.completions.create({ model, messages: "not a list" });
} catch (err) {
  notFound = { name: err.constructor.name, status: err.status ?? null };
}
console.log(JSON.stringify({
  models: models.data.map((m) => m.id),
  plain: {
    content: plain.choices[0].message.content,
    finish_reason: plain.choices[0].finish_reason,
    usage: plain.usage,
  },
  stream: { pieces: pieces.length, text: pieces.join(""), finish_reason: finish, usage },
  error: notFound,
}));
