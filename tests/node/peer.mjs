// The official openai npm package against nomyo-proxy: one chat, one stream, one bad token.
// Usage: node peer.mjs BASE_URL TOKEN; prints one JSON object with what it saw.
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const messages = [{ role: "user", content: "hello from node" }];
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

const chat = await client.chat.completions.create({ model: "devserver/echo", messages });
const stream = await client.chat.completions.create({
  model: "devserver/echo", messages, stream: true, stream_options: { include_usage: true },
});
let streamed = "";
let usage = null;
for await (const chunk of stream) {
  for (const choice of chunk.choices) streamed += choice.delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
let badStatus = null;
let badClass = null;
try {
  await new OpenAI({ baseURL, apiKey: "nmyp_wrong", maxRetries: 0 }).chat.completions.create({
    model: "devserver/echo", messages,
  });
} catch (err) {
  badStatus = err.status;
  badClass = err.constructor.name;
}
console.log(JSON.stringify({
  chat: chat.choices[0].message.content, streamed, usage, badStatus, badClass,
}));
