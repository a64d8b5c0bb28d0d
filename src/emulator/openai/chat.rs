use super::*;

/// A validated chat request, reduced to what the answer needs.
struct Plan<'a> {
    model: &'a str,
    n: u32,
    stream: bool,
    include_usage: bool,
    limit: Option<u64>,
    json: bool,
    tool: Option<FnTool<'a>>,
    prompt_tokens: u64,
    service_tier: &'a str,
}

pub(super) fn answer(adm: &Admitted) -> Result<HttpResponse, ApiError> {
    let azure = match adm.ctx.dialect {
        Dialect::Azure(azure) => Some(azure),
        Dialect::OpenAi => None,
    };
    let root = parse_object(&adm.body)?;
    // On Azure's deployment URLs the deployment names the model; `model` may be left out.
    let plan = validate(&root, azure.is_some_and(|a| a.deployment_in_url))?;
    let mut reply = Reply::plan(adm.tokens(), plan.json, plan.tool, plan.limit);
    let filtered = azure.is_some_and(|a| a.filter_output);
    if filtered {
        // Azure's output filter stops the answer half way.
        let keep = reply.pieces.len() / 2;
        reply.pieces.truncate(keep);
    }
    let id = alnum_id("chatcmpl-", 29);
    let call_ids: Vec<String> = match reply.body {
        Body::Tool { .. } => (0..plan.n).map(|_| alnum_id("call_", 24)).collect(),
        Body::Text => Vec::new(),
    };
    let completion_tokens = reply.output_tokens().saturating_mul(u64::from(plan.n));
    let usage = ChatUsage::new(plan.prompt_tokens, completion_tokens);
    let finish = match (&reply.body, reply.truncated) {
        _ if filtered => "content_filter",
        (_, true) => "length",
        (Body::Tool { .. }, false) => "tool_calls",
        (Body::Text, false) => "stop",
    };
    let head = Head {
        id: &id,
        created: unix_now(),
        model: azure.map_or(plan.model, |a| a.model),
        service_tier: plan.service_tier,
        azure,
    };
    if plan.stream {
        let frames = stream_frames(&head, &plan, &reply, &call_ids, finish, &usage, adm)?;
        return Ok(adm.sse(frames));
    }
    let content = reply.content();
    let choices: Vec<ChatChoice<'_>> = (0..plan.n)
        .map(|i| {
            let tool_calls = match reply.body {
                Body::Tool { name } => call_ids.get(i as usize).map(|call_id| {
                    [ToolCall {
                        id: call_id,
                        kind: "function",
                        function: FunctionCall {
                            name,
                            arguments: &content,
                        },
                    }]
                }),
                Body::Text => None,
            };
            ChatChoice {
                index: i,
                content_filter_results: head.filter_results(Some(finish), true),
                message: ChatMessage {
                    role: "assistant",
                    content: (tool_calls.is_none() && !filtered).then_some(content.as_str()),
                    refusal: None,
                    annotations: [],
                    tool_calls,
                },
                logprobs: None,
                finish_reason: finish,
            }
        })
        .collect();
    let completion = ChatCompletion {
        id: head.id,
        object: "chat.completion",
        created: head.created,
        model: head.model,
        choices,
        usage,
        service_tier: head.service_tier,
        system_fingerprint: FINGERPRINT,
        prompt_filter_results: azure.map(|a| &a.annotations.prompt_filter_results),
    };
    Ok(adm.json(to_json(&completion)?))
}

/// The fields every chunk repeats.
struct Head<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
    service_tier: &'a str,
    azure: Option<AzureAnswer>,
}

impl Head<'_> {
    /// A chunk choice, with Azure's filter annotations when this is Azure.
    fn choice<'d>(
        &self,
        index: u32,
        delta: Delta<'d>,
        finish_reason: Option<&'static str>,
    ) -> ChunkChoice<'d> {
        ChunkChoice {
            index,
            logprobs: None,
            finish_reason,
            // Azure annotates the chunks that carry text; role and finish chunks say `{}`.
            content_filter_results: self.filter_results(
                finish_reason,
                delta.role.is_none() && finish_reason.is_none(),
            ),
            delta,
        }
    }

    /// Azure's `content_filter_results` for a choice: the filter's verdict where text was
    /// annotated (or filtered), `{}` elsewhere. `None` (absent) on OpenAI.
    fn filter_results(
        &self,
        finish_reason: Option<&str>,
        annotated: bool,
    ) -> Option<&'static Value> {
        let annotations = self.azure?.annotations;
        Some(match finish_reason {
            Some("content_filter") => &annotations.filtered,
            _ if annotated => &annotations.safe,
            _ => &EMPTY_OBJECT,
        })
    }

    fn frame(
        &self,
        choices: &[ChunkChoice<'_>],
        usage: Option<Option<&ChatUsage>>,
    ) -> Result<Bytes, ApiError> {
        sse_frame(
            None,
            &Chunk {
                id: self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model,
                service_tier: self.service_tier,
                system_fingerprint: FINGERPRINT,
                choices,
                usage,
            },
        )
    }
}

/// The whole chat stream, in OpenAI's order: a role chunk per choice, (for tools) the call
/// header, one delta per piece, a finish chunk per choice, the usage chunk when asked for,
/// and `[DONE]`. A `midstream_error` fault replaces everything after its piece with an error
/// event and ends the body without `[DONE]`.
fn stream_frames(
    head: &Head<'_>,
    plan: &Plan<'_>,
    reply: &Reply<'_>,
    call_ids: &[String],
    finish: &'static str,
    usage: &ChatUsage,
    adm: &Admitted,
) -> Result<Vec<Bytes>, ApiError> {
    let n = plan.n;
    // With include_usage, every chunk says `"usage": null` until the usage chunk.
    let usage_null = plan.include_usage.then_some(None);
    let mut frames = Vec::with_capacity((reply.pieces.len() + 3) * n as usize + 3);
    if let Some(azure) = head.azure {
        frames.push(azure.annotations.filter_frame.clone());
    }
    let tool_name = match reply.body {
        Body::Tool { name } => Some(name),
        Body::Text => None,
    };
    for index in 0..n {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(if tool_name.is_some() { None } else { Some("") }),
            refusal: head.azure.map(|_| None),
            tool_calls: None,
        };
        frames.push(head.frame(&[head.choice(index, delta, None)], usage_null)?);
    }
    if let Some(name) = tool_name {
        for (index, call_id) in (0..n).zip(call_ids) {
            let call = ToolCallDelta {
                index: 0,
                id: Some(call_id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments: "",
                },
            };
            let delta = Delta {
                tool_calls: Some([call]),
                ..Delta::default()
            };
            frames.push(head.frame(&[head.choice(index, delta, None)], usage_null)?);
        }
    }
    let (pieces, fails) = reply.streamed(&adm.fault);
    for piece in pieces {
        for index in 0..n {
            let delta = match tool_name {
                Some(_) => Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: 0,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: piece.as_ref(),
                        },
                    }]),
                    ..Delta::default()
                },
                None => Delta {
                    content: Some(Some(piece.as_ref())),
                    ..Delta::default()
                },
            };
            frames.push(head.frame(&[head.choice(index, delta, None)], usage_null)?);
        }
    }
    if fails {
        frames.push(error_event()?);
        return Ok(frames);
    }
    for index in 0..n {
        let choice = head.choice(index, Delta::default(), Some(finish));
        frames.push(head.frame(&[choice], usage_null)?);
    }
    // The usage chunk goes out with `[DONE]`, in one write as OpenAI sends it: it is no token,
    // so pacing must not put a chunk's delay before it. A filtered Azure stream ends at its
    // verdict: no usage chunk.
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    if plan.include_usage && finish != "content_filter" {
        let usage = head.frame(&[], Some(Some(usage)))?;
        frames.push([usage, done].concat().into());
    } else {
        frames.push(done);
    }
    Ok(frames)
}

/// The mid-stream error as OpenAI sends it on a chat stream: a `data:` event whose JSON has
/// an `error` member (the SDK raises on it).
fn error_event() -> Result<Bytes, ApiError> {
    sse_frame(
        None,
        &ErrorBody {
            error: ErrorObject {
                message: MIDSTREAM_ERROR,
                kind: "server_error",
                param: None,
                code: Some("server_error"),
            },
        },
    )
}

fn validate(root: &Map<String, Value>, deployment: bool) -> Result<Plan<'_>, ApiError> {
    let unknown: Vec<&str> = root
        .keys()
        .map(String::as_str)
        .filter(|k| !CHAT_PARAMS.contains(k))
        .collect();
    match unknown.as_slice() {
        [] => {}
        [one] => {
            return Err(ApiError::invalid(format!(
                "Unrecognized request argument supplied: {one}"
            )));
        }
        many => {
            return Err(ApiError::invalid(format!(
                "Unrecognized request arguments supplied: {}",
                many.join(", ")
            )));
        }
    }
    let model = match as_str(root.get("model"), "model")? {
        Some(model) if !model.is_empty() => model,
        _ if deployment => "",
        _ => return Err(ApiError::invalid("you must provide a model parameter")),
    };
    let messages =
        as_array(root.get("messages"), "messages")?.ok_or_else(|| missing("messages"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but \
             got an empty array instead.",
        )
        .param("messages")
        .code("empty_array"));
    }
    let (stats, last_is_user) = check_messages(messages)?;

    let (stream, include_usage) = check_stream(root, true)?;
    as_decimal(root.get("temperature"), "temperature", 0.0, 2.0)?;
    as_decimal(root.get("top_p"), "top_p", 0.0, 1.0)?;
    as_decimal(root.get("presence_penalty"), "presence_penalty", -2.0, 2.0)?;
    as_decimal(
        root.get("frequency_penalty"),
        "frequency_penalty",
        -2.0,
        2.0,
    )?;
    let n = as_int(root.get("n"), "n", 1, Some(128))?.unwrap_or(1);
    let max_completion = as_int(
        root.get("max_completion_tokens"),
        "max_completion_tokens",
        1,
        None,
    )?;
    let max_tokens = as_int(root.get("max_tokens"), "max_tokens", 1, None)?;
    as_int(root.get("seed"), "seed", i64::MIN, None)?;
    as_bool(root.get("logprobs"), "logprobs")?;
    as_int(root.get("top_logprobs"), "top_logprobs", 0, Some(20))?;
    as_bool(root.get("store"), "store")?;
    as_bool(root.get("parallel_tool_calls"), "parallel_tool_calls")?;
    as_str(root.get("user"), "user")?;
    as_str(root.get("safety_identifier"), "safety_identifier")?;
    as_str(root.get("prompt_cache_key"), "prompt_cache_key")?;
    as_object(root.get("logit_bias"), "logit_bias")?;
    as_array(root.get("modalities"), "modalities")?;
    as_enum(root.get("reasoning_effort"), "reasoning_effort", &EFFORTS)?;
    as_enum(root.get("verbosity"), "verbosity", &VERBOSITIES)?;
    check_metadata(root.get("metadata"))?;
    check_stop(root.get("stop"))?;
    let service_tier = match as_enum(root.get("service_tier"), "service_tier", &SERVICE_TIERS)? {
        None | Some("auto") => "default",
        Some(tier) => tier,
    };

    let json = check_response_format(root.get("response_format"))?;
    if json == Some("json_object") && !stats.mentions_json {
        return Err(ApiError::invalid(
            "'messages' must contain the word 'json' in some form, to use 'response_format' \
             of type 'json_object'.",
        )
        .param("messages"));
    }
    let tools = check_tools(root.get("tools"))?;
    let choice = check_tool_choice(root.get("tool_choice"), root.get("tools"))?;
    let tool = pick_tool(&tools, choice, last_is_user).map_err(unknown_tool)?;

    Ok(Plan {
        model,
        n: u32::try_from(n).unwrap_or(1),
        stream,
        include_usage,
        limit: max_completion
            .or(max_tokens)
            .and_then(|l| u64::try_from(l).ok()),
        json: json.is_some(),
        tool,
        prompt_tokens: stats.prompt_tokens(),
        service_tier,
    })
}

/// Roles, contents and the tool-call protocol: every `tool` message answers a call of the
/// assistant message before it, and every call is answered before the conversation moves
/// on. These are the mistakes a translating gateway makes, so the emulator refuses them the
/// way OpenAI does. Returns the text stats and whether the last message is the user's.
fn check_messages(messages: &[Value]) -> Result<(TextStats, bool), ApiError> {
    let mut stats = TextStats::default();
    // Ids of the latest assistant tool calls, and the ones still unanswered.
    let mut open: Option<(usize, Vec<&str>)> = None;
    let mut pending: Vec<&str> = Vec::new();
    let mut last_role = "";
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Some(message) = message.as_object() else {
            return Err(invalid_type(&at, "an object", message));
        };
        let role_param = format!("{at}.role");
        let role = as_str(message.get("role"), &role_param)?.ok_or_else(|| missing(&role_param))?;
        if !CHAT_ROLES.contains(&role) {
            return Err(invalid_value(&role_param, role, &CHAT_ROLES));
        }
        let content_param = format!("{at}.content");
        let content = present(message.get("content"));
        let mut calls = Vec::new();
        match role {
            "assistant" => {
                if let Some(tool_calls) =
                    as_array(message.get("tool_calls"), &format!("{at}.tool_calls"))?
                {
                    calls = check_tool_calls(tool_calls, &at, &mut stats)?;
                }
                let answers_by_function = present(message.get("function_call")).is_some();
                if content.is_none() && calls.is_empty() && !answers_by_function {
                    return Err(missing(&content_param));
                }
            }
            "tool" => {
                let id_param = format!("{at}.tool_call_id");
                let id = as_str(message.get("tool_call_id"), &id_param)?
                    .ok_or_else(|| missing(&id_param))?;
                let Some((_, ids)) = &open else {
                    return Err(ApiError::invalid(
                        "Invalid parameter: messages with role 'tool' must be a response to \
                         a preceeding message with 'tool_calls'.",
                    )
                    .param(format!("messages.[{i}].role")));
                };
                if !ids.contains(&id) {
                    return Err(ApiError::invalid(format!(
                        "Invalid parameter: 'tool_call_id' of '{id}' not found in \
                         'tool_calls' of previous message."
                    ))
                    .param(format!("messages.[{i}].tool_call_id")));
                }
                pending.retain(|p| *p != id);
                if content.is_none() {
                    return Err(missing(&content_param));
                }
            }
            "function" => {
                let name_param = format!("{at}.name");
                as_str(message.get("name"), &name_param)?.ok_or_else(|| missing(&name_param))?;
            }
            _ => {
                if content.is_none() {
                    return Err(missing(&content_param));
                }
            }
        }
        if role != "tool" {
            unanswered(&open, &pending)?;
            open = None;
            if !calls.is_empty() {
                pending.clone_from(&calls);
                open = Some((i, calls));
            }
        }
        if let Some(content) = content {
            check_content(content, &content_param, &mut stats)?;
        }
        stats.messages += 1;
        last_role = role;
    }
    unanswered(&open, &pending)?;
    Ok((stats, last_role == "user"))
}

fn unanswered(open: &Option<(usize, Vec<&str>)>, pending: &[&str]) -> Result<(), ApiError> {
    match open {
        Some((at, _)) if !pending.is_empty() => Err(ApiError::invalid(format!(
            "An assistant message with 'tool_calls' must be followed by tool messages \
             responding to each 'tool_call_id'. The following tool_call_ids did not have \
             response messages: {}",
            pending.join(", ")
        ))
        .param(format!("messages.[{at}].role"))),
        _ => Ok(()),
    }
}

fn check_tool_calls<'a>(
    tool_calls: &'a [Value],
    at: &str,
    stats: &mut TextStats,
) -> Result<Vec<&'a str>, ApiError> {
    let mut ids = Vec::with_capacity(tool_calls.len());
    for (j, call) in tool_calls.iter().enumerate() {
        let p = format!("{at}.tool_calls[{j}]");
        let call = as_object(Some(call), &p)?.ok_or_else(|| missing(&p))?;
        let id = as_str(call.get("id"), &format!("{p}.id"))?
            .ok_or_else(|| missing(&format!("{p}.id")))?;
        as_enum(
            call.get("type"),
            &format!("{p}.type"),
            &["function", "custom"],
        )?
        .ok_or_else(|| missing(&format!("{p}.type")))?;
        if let Some(function) = as_object(call.get("function"), &format!("{p}.function"))? {
            as_str(function.get("name"), &format!("{p}.function.name"))?
                .ok_or_else(|| missing(&format!("{p}.function.name")))?;
            // A JSON object instead of a JSON string is the classic translation bug.
            let arguments = as_str(
                function.get("arguments"),
                &format!("{p}.function.arguments"),
            )?
            .ok_or_else(|| missing(&format!("{p}.function.arguments")))?;
            stats.add(arguments);
        }
        ids.push(id);
    }
    Ok(ids)
}

fn check_content(content: &Value, param: &str, stats: &mut TextStats) -> Result<(), ApiError> {
    let parts = match content {
        Value::String(text) => {
            stats.add(text);
            return Ok(());
        }
        Value::Array(parts) => parts,
        other => {
            return Err(invalid_type(
                param,
                "one of a string or array of objects",
                other,
            ));
        }
    };
    for (j, part) in parts.iter().enumerate() {
        let p = format!("{param}[{j}]");
        let part = as_object(Some(part), &p)?.ok_or_else(|| missing(&p))?;
        let type_param = format!("{p}.type");
        let ty = as_str(part.get("type"), &type_param)?.ok_or_else(|| missing(&type_param))?;
        match ty {
            "text" => {
                let text = as_str(part.get("text"), &format!("{p}.text"))?
                    .ok_or_else(|| missing(&format!("{p}.text")))?;
                stats.add(text);
            }
            "image_url" => {
                let image = as_object(part.get("image_url"), &format!("{p}.image_url"))?
                    .ok_or_else(|| missing(&format!("{p}.image_url")))?;
                as_str(image.get("url"), &format!("{p}.image_url.url"))?
                    .ok_or_else(|| missing(&format!("{p}.image_url.url")))?;
            }
            "refusal" => {
                as_str(part.get("refusal"), &format!("{p}.refusal"))?
                    .ok_or_else(|| missing(&format!("{p}.refusal")))?;
            }
            "input_audio" | "audio" | "file" => {}
            other => return Err(invalid_value(&type_param, other, &CHAT_PART_TYPES)),
        }
    }
    Ok(())
}

fn check_stop(stop: Option<&Value>) -> Result<(), ApiError> {
    match present(stop) {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) => {
            if items.len() > 4 {
                return Err(ApiError::invalid(format!(
                    "Invalid 'stop': array too long. Expected an array with maximum length \
                     4, but got an array with length {} instead.",
                    items.len()
                ))
                .param("stop")
                .code("array_above_max_length"));
            }
            for (i, item) in items.iter().enumerate() {
                as_str(Some(item), &format!("stop[{i}]"))?;
            }
            Ok(())
        }
        Some(other) => Err(invalid_type(
            "stop",
            "one of a string or array of strings",
            other,
        )),
    }
}

/// Returns the structured-output type when the reply must be JSON.
fn check_response_format(format: Option<&Value>) -> Result<Option<&str>, ApiError> {
    let Some(format) = as_object(format, "response_format")? else {
        return Ok(None);
    };
    let ty = as_enum(format.get("type"), "response_format.type", &FORMAT_TYPES)?
        .ok_or_else(|| missing("response_format.type"))?;
    if ty == "json_schema" {
        let schema = as_object(format.get("json_schema"), "response_format.json_schema")?
            .ok_or_else(|| missing("response_format.json_schema"))?;
        as_str(schema.get("name"), "response_format.json_schema.name")?
            .ok_or_else(|| missing("response_format.json_schema.name"))?;
        as_object(schema.get("schema"), "response_format.json_schema.schema")?;
    }
    Ok((ty != "text").then_some(ty))
}

/// Chat tools are nested: `{type:"function", function:{name, parameters}}`.
fn check_tools(tools: Option<&Value>) -> Result<Vec<FnTool<'_>>, ApiError> {
    let mut out = Vec::new();
    for (p, tool) in tool_objects(tools)? {
        let ty = as_enum(
            tool.get("type"),
            &format!("{p}.type"),
            &["function", "custom"],
        )?
        .ok_or_else(|| missing(&format!("{p}.type")))?;
        if ty != "function" {
            continue;
        }
        let function = as_object(tool.get("function"), &format!("{p}.function"))?
            .ok_or_else(|| missing(&format!("{p}.function")))?;
        let name_param = format!("{p}.function.name");
        let name =
            as_str(function.get("name"), &name_param)?.ok_or_else(|| missing(&name_param))?;
        check_function_name(name, &name_param)?;
        let parameters = function.get("parameters");
        as_object(parameters, &format!("{p}.function.parameters"))?;
        out.push(FnTool { name, parameters });
    }
    Ok(out)
}

fn check_tool_choice<'a>(
    choice: Option<&'a Value>,
    tools: Option<&Value>,
) -> Result<ToolChoice<'a>, ApiError> {
    let Some(choice) = present(choice) else {
        return Ok(ToolChoice::Auto);
    };
    let has_tools = present(tools)
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if !has_tools {
        return Err(ApiError::invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are \
             specified.",
        )
        .param("tool_choice"));
    }
    match choice {
        Value::String(s) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" | "required" => Ok(ToolChoice::Auto),
            other => Err(invalid_value("tool_choice", other, &TOOL_CHOICES)),
        },
        Value::Object(choice) => {
            let ty = as_enum(
                choice.get("type"),
                "tool_choice.type",
                &["function", "allowed_tools", "custom"],
            )?
            .ok_or_else(|| missing("tool_choice.type"))?;
            if ty != "function" {
                return Ok(ToolChoice::Auto);
            }
            let function = as_object(choice.get("function"), "tool_choice.function")?
                .ok_or_else(|| missing("tool_choice.function"))?;
            let name = as_str(function.get("name"), "tool_choice.function.name")?
                .ok_or_else(|| missing("tool_choice.function.name"))?;
            Ok(ToolChoice::Named(name))
        }
        other => Err(invalid_type(
            "tool_choice",
            "one of a string or an object",
            other,
        )),
    }
}
