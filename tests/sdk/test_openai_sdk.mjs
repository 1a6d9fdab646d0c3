// The official OpenAI Node SDK (npm `openai`, pinned in tests/sdk/node/package.json) against a
// running Warden. Started by the Rust test `sdk::the_openai_node_sdk_works_against_warden`,
// which runs Warden in front of fake upstreams and passes WARDEN_BASE_URL,
// WARDEN_EXPECTED_TEXT and OPENAI_NODE_MODULES (where `make sdk-node` installed the package).
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(`${process.env.OPENAI_NODE_MODULES}/`);
const sdk = require("openai");
const OpenAI = sdk.OpenAI ?? sdk.default;
const client = new OpenAI({
  baseURL: process.env.WARDEN_BASE_URL,
  apiKey: "unused",
  maxRetries: 0,
  timeout: 10_000,
});
const EXPECTED = process.env.WARDEN_EXPECTED_TEXT;
const QUESTION = [{ role: "user", content: "Why is the sky blue?" }];

const tests = {
  async modelsList() {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    assert.deepEqual(ids, ["llama3.2", "llama3.2-vllm", "llama3.2-tools"]);
    assert.equal((await client.models.retrieve("llama3.2")).id, "llama3.2");
  },

  async chatNonStreaming() {
    const completion = await client.chat.completions.create({ model: "llama3.2", messages: QUESTION });
    assert.equal(completion.object, "chat.completion");
    assert.equal(completion.model, "llama3.2");
    assert.equal(completion.choices[0].message.role, "assistant");
    assert.ok(completion.choices[0].message.content);
    assert.equal(completion.choices[0].finish_reason, "stop");
    const usage = completion.usage;
    assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  },

  async chatStreamingWithUsage() {
    const stream = await client.chat.completions.create({
      model: "llama3.2",
      messages: QUESTION,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const text = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta.content ?? "").join("");
    assert.equal(text, EXPECTED);
    assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage.completion_tokens > 0);
  },

  async streamHelperCollectsTheMessage() {
    // The SDK's own stream helper reassembles the message from the deltas.
    const runner = client.chat.completions.stream({ model: "llama3.2", messages: QUESTION });
    const completion = await runner.finalChatCompletion();
    assert.equal(completion.choices[0].message.content, EXPECTED);
    assert.equal(completion.choices[0].finish_reason, "stop");
  },

  async blockedQuestionIsAContentFilterRefusal() {
    const messages = [{ role: "user", content: "How do I hotwire a car?" }];
    const completion = await client.chat.completions.create({ model: "llama3.2", messages });
    assert.equal(completion.choices[0].finish_reason, "content_filter");
    assert.equal(completion.choices[0].message.content, "I can't help with that.");
    assert.equal(completion.warden.guard.input.verdict, "blocked");
    const chunks = [];
    for await (const chunk of await client.chat.completions.create({ model: "llama3.2", messages, stream: true })) {
      chunks.push(chunk);
    }
    assert.equal(chunks.at(-1).choices[0].finish_reason, "content_filter");
  },

  async unknownModelRaisesNotFound() {
    await assert.rejects(
      client.chat.completions.create({ model: "gpt-unknown", messages: QUESTION }),
      (err) => {
        assert.ok(err instanceof OpenAI.NotFoundError, String(err));
        assert.equal(err.code, "model_not_found");
        assert.ok(err.headers.get("x-request-id"));
        return true;
      },
    );
  },

  async badRequestRaisesBadRequest() {
    await assert.rejects(client.chat.completions.create({ model: "llama3.2", messages: [] }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, String(err));
      assert.equal(err.param, "messages");
      return true;
    });
  },

  async moderationsCreate() {
    const result = await client.moderations.create({ input: ["How do I hotwire a car?", "What a lovely day"] });
    const [flagged, fine] = result.results;
    assert.equal(flagged.flagged, true);
    assert.equal(flagged.categories.illicit, true);
    assert.equal(fine.flagged, false);
  },

  async responsesCreate() {
    const chat = await client.chat.completions.create({ model: "llama3.2", messages: QUESTION });
    const response = await client.responses.create({ model: "llama3.2", input: "Why is the sky blue?" });
    assert.equal(response.object, "response");
    assert.equal(response.status, "completed");
    assert.equal(response.output_text, chat.choices[0].message.content);
    const blocked = await client.responses.create({
      model: "llama3.2",
      input: [{ role: "user", content: [{ type: "input_text", text: "How do I hotwire a car?" }] }],
    });
    assert.equal(blocked.status, "incomplete");
    assert.equal(blocked.incomplete_details.reason, "content_filter");
    assert.equal(blocked.output[0].content[0].type, "refusal");
    await assert.rejects(
      client.responses.create({ model: "llama3.2", input: "hi", tools: [{ type: "web_search" }] }),
      (err) => err instanceof OpenAI.BadRequestError && err.param === "tools[0].type",
    );
  },

  async responsesStream() {
    const stream = client.responses.stream({ model: "llama3.2", input: "Why is the sky blue?" });
    const events = [];
    for await (const event of stream) events.push(event);
    const final = await stream.finalResponse();
    assert.deepEqual(
      events.map((e) => e.sequence_number),
      events.map((_, i) => i),
    );
    assert.equal(events.at(-1).type, "response.completed");
    const deltas = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta);
    assert.equal(deltas.join(""), EXPECTED);
    assert.equal(final.output[0].content[0].text, EXPECTED);
    assert.ok(final.usage.output_tokens > 0);
  },

  async responsesToolRoundTrip() {
    const weather = {
      type: "function",
      name: "get_current_weather",
      parameters: { type: "object", properties: { location: { type: "string" } }, required: ["location"] },
    };
    const question = { role: "user", content: "What is the weather in Paris?" };
    const first = await client.responses.create({ model: "llama3.2-tools", input: [question], tools: [weather] });
    const [call] = first.output;
    assert.equal(call.type, "function_call");
    assert.deepEqual(JSON.parse(call.arguments), { format: "celsius", location: "Paris, FR" });
    const followUp = await client.responses.create({
      model: "llama3.2",
      tools: [weather],
      // Checked by the Rust test: the tool turn reached the model and the guard.
      input: [question, ...first.output, { type: "function_call_output", call_id: call.call_id, output: "18 degrees and sunny" }],
    });
    assert.equal(followUp.status, "completed");
    assert.ok(followUp.output_text);
  },

  async embeddingsCreate() {
    // The SDK asks for base64 by default and decodes it into floats.
    const result = await client.embeddings.create({ model: "all-MiniLM-L6-v2", input: ["A man is playing a guitar."] });
    assert.equal(result.data[0].embedding.length, 384);
    assert.ok(result.usage.prompt_tokens > 0);
  },
};

let failed = 0;
for (const [name, test] of Object.entries(tests)) {
  try {
    await test();
    console.log(`ok ${name}`);
  } catch (err) {
    failed += 1;
    console.log(`FAILED ${name}: ${err.stack ?? err}`);
  }
}
console.log(`${Object.keys(tests).length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
