use super::*;

/// A validated Responses request: what the answer needs and what the Response object echoes.
struct Plan<'a> {
    model: &'a str,
    stream: bool,
    store: bool,
    json: bool,
    tool: Option<FnTool<'a>>,
    prompt_tokens: u64,
    max_output_tokens: Option<u64>,
    echo: Echo<'a>,
}

/// The request values a Response object repeats back.
#[derive(Clone, Copy)]
struct Echo<'a> {
    instructions: Option<&'a str>,
    previous_response_id: Option<&'a str>,
    parallel_tool_calls: bool,
    reasoning: Reasoning<'a>,
    temperature: f64,
    top_p: f64,
    text: &'a Value,
    tool_choice: &'a Value,
    tools: &'a Value,
    truncation: &'a str,
    user: Option<&'a str>,
    metadata: &'a Value,
}

pub(super) fn answer(adm: &Admitted, state: &OpenAiState) -> Result<HttpResponse, ApiError> {
    let root = parse_object(&adm.body)?;
    let deployment_in_url = matches!(
        adm.ctx.dialect,
        Dialect::Azure(AzureAnswer {
            deployment_in_url: true,
            ..
        })
    );
    let plan = validate(&root, state, deployment_in_url)?;
    let reply = Reply::plan(adm.tokens(), plan.json, plan.tool, plan.max_output_tokens);
    let resp_id = hex_id("resp_");
    let content = reply.content();
    let (item_id, call_id) = match reply.body {
        Body::Text => (hex_id("msg_"), None),
        Body::Tool { .. } => (hex_id("fc_"), Some(alnum_id("call_", 24))),
    };
    let status = if reply.truncated {
        "incomplete"
    } else {
        "completed"
    };
    let parts = [OutputText::new(&content)];
    let output = [match reply.body {
        Body::Text => OutputItem::Message(MessageItem::new(&item_id, status, &parts)),
        Body::Tool { name } => OutputItem::FunctionCall(FunctionCallItem {
            kind: "function_call",
            id: &item_id,
            call_id: call_id.as_deref().unwrap_or_default(),
            name,
            arguments: &content,
            status,
        }),
    }];
    let usage = ResponseUsage::new(plan.prompt_tokens, reply.output_tokens());
    let done = ResponseObject {
        id: &resp_id,
        object: "response",
        created_at: unix_now(),
        status,
        error: None,
        incomplete_details: reply.truncated.then_some(IncompleteDetails {
            reason: "max_output_tokens",
        }),
        instructions: plan.echo.instructions,
        max_output_tokens: plan.max_output_tokens,
        model: match adm.ctx.dialect {
            Dialect::Azure(azure) => azure.model,
            Dialect::OpenAi => plan.model,
        },
        output: &output,
        parallel_tool_calls: plan.echo.parallel_tool_calls,
        previous_response_id: plan.echo.previous_response_id,
        reasoning: plan.echo.reasoning,
        store: plan.store,
        temperature: plan.echo.temperature,
        text: plan.echo.text,
        tool_choice: plan.echo.tool_choice,
        tools: plan.echo.tools,
        top_p: plan.echo.top_p,
        truncation: plan.echo.truncation,
        usage: Some(&usage),
        user: plan.echo.user,
        metadata: plan.echo.metadata,
    };
    let failed = ResponseObject {
        status: "failed",
        error: Some(ResponseError {
            code: "server_error",
            message: MIDSTREAM_ERROR,
        }),
        incomplete_details: None,
        output: &[],
        usage: None,
        ..done
    };
    if plan.store || !plan.stream {
        // What the store keeps is what the client was told last: the terminal object.
        let failing = plan.stream && adm.fault.midstream_error.is_some();
        let terminal = Bytes::from(to_json(if failing { &failed } else { &done })?);
        if plan.store {
            let stored = Stored {
                json: terminal.clone(),
                context_tokens: plan.prompt_tokens.saturating_add(reply.output_tokens()),
                call_ids: call_id.iter().cloned().collect(),
            };
            state.responses.insert(resp_id.clone(), Arc::new(stored));
        }
        if !plan.stream {
            return Ok(adm.json(terminal));
        }
    }
    let frames = stream_frames(&done, &failed, &reply, &content, adm)?;
    Ok(adm.sse(frames))
}

/// Serialises events with `type` and a `sequence_number` counting from 0.
struct Events {
    next: u64,
    frames: Vec<Bytes>,
}

impl Events {
    fn push<T: Serialize>(&mut self, kind: &str, body: &T) -> Result<(), ApiError> {
        let event = Event {
            kind,
            sequence_number: self.next,
            body,
        };
        self.frames.push(sse_frame(Some(kind), &event)?);
        self.next += 1;
        Ok(())
    }
}

/// The Responses event sequence: created, in_progress, the item and its content (text
/// deltas or argument deltas), then completed or incomplete. No `[DONE]`: the terminal
/// event ends the stream. A `midstream_error` fault cuts in after its delta with an `error`
/// event and `response.failed`.
fn stream_frames(
    done: &ResponseObject<'_>,
    failed: &ResponseObject<'_>,
    reply: &Reply<'_>,
    content: &str,
    adm: &Admitted,
) -> Result<Vec<Bytes>, ApiError> {
    let mut events = Events {
        next: 0,
        frames: Vec::with_capacity(reply.pieces.len() + 8),
    };
    let started = ResponseObject {
        status: "in_progress",
        incomplete_details: None,
        output: &[],
        usage: None,
        ..*done
    };
    events.push("response.created", &ResponseEvent { response: &started })?;
    events.push(
        "response.in_progress",
        &ResponseEvent { response: &started },
    )?;
    let Some(item) = done.output.first() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER_ERROR,
        ));
    };
    let fail = |mut events: Events| -> Result<Vec<Bytes>, ApiError> {
        let error = StreamError {
            code: Some("server_error"),
            message: MIDSTREAM_ERROR,
            param: None,
        };
        events.push("error", &error)?;
        events.push("response.failed", &ResponseEvent { response: failed })?;
        Ok(events.frames)
    };
    let (pieces, fails) = reply.streamed(&adm.fault);
    // The item opens empty and in progress; its content follows as deltas.
    let opened = match item {
        OutputItem::Message(msg) => OutputItem::Message(MessageItem {
            status: "in_progress",
            content: &[],
            ..*msg
        }),
        OutputItem::FunctionCall(call) => OutputItem::FunctionCall(FunctionCallItem {
            arguments: "",
            status: "in_progress",
            ..*call
        }),
    };
    events.push(
        "response.output_item.added",
        &ItemEvent {
            output_index: 0,
            item: &opened,
        },
    )?;
    match item {
        OutputItem::Message(msg) => {
            let part = |text| PartEvent {
                item_id: msg.id,
                output_index: 0,
                content_index: 0,
                part: OutputText::new(text),
            };
            events.push("response.content_part.added", &part(""))?;
            for piece in pieces {
                let delta = TextEvent::new(msg.id, Some(piece.as_ref()), None);
                events.push("response.output_text.delta", &delta)?;
            }
            if fails {
                return fail(events);
            }
            let text_done = TextEvent::new(msg.id, None, Some(content));
            events.push("response.output_text.done", &text_done)?;
            events.push("response.content_part.done", &part(content))?;
        }
        OutputItem::FunctionCall(call) => {
            for piece in pieces {
                let delta = ArgumentsEvent {
                    item_id: call.id,
                    output_index: 0,
                    delta: Some(piece.as_ref()),
                    name: None,
                    arguments: None,
                };
                events.push("response.function_call_arguments.delta", &delta)?;
            }
            if fails {
                return fail(events);
            }
            let args_done = ArgumentsEvent {
                item_id: call.id,
                output_index: 0,
                delta: None,
                name: Some(call.name),
                arguments: Some(content),
            };
            events.push("response.function_call_arguments.done", &args_done)?;
        }
    }
    events.push(
        "response.output_item.done",
        &ItemEvent {
            output_index: 0,
            item,
        },
    )?;
    let terminal = if done.status == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push(terminal, &ResponseEvent { response: done })?;
    Ok(events.frames)
}

/// `deployment`: the URL names an Azure deployment, so `model` may be left out.
fn validate<'a>(
    root: &'a Map<String, Value>,
    state: &OpenAiState,
    deployment: bool,
) -> Result<Plan<'a>, ApiError> {
    if let Some(unknown) = root
        .keys()
        .find(|k| !RESPONSES_PARAMS.contains(&k.as_str()))
    {
        return Err(
            ApiError::invalid(format!("Unknown parameter: '{unknown}'."))
                .param(unknown.as_str())
                .code("unknown_parameter"),
        );
    }
    let model = as_str(root.get("model"), "model")?
        .filter(|m| !m.is_empty())
        .or(deployment.then_some(""))
        .ok_or_else(|| missing("model"))?;

    let previous_response_id = as_str(root.get("previous_response_id"), "previous_response_id")?;
    let conversation = present(root.get("conversation"));
    if previous_response_id.is_some() && conversation.is_some() {
        return Err(ApiError::invalid(
            "Mutually exclusive parameters: Ensure you are only providing one of: \
             'previous_response_id' or 'conversation'.",
        )
        .param("previous_response_id")
        .code("mutually_exclusive_parameters"));
    }
    if let Some(conversation) = conversation {
        // The emulator has no Conversations API, so every conversation id is unknown.
        let id = match conversation {
            Value::String(id) => id.as_str(),
            Value::Object(c) => c.get("id").and_then(Value::as_str).unwrap_or_default(),
            other => {
                return Err(invalid_type(
                    "conversation",
                    "one of a string or an object",
                    other,
                ));
            }
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Conversation with id '{id}' not found."),
        )
        .param("conversation"));
    }
    let previous = match previous_response_id {
        Some(id) => Some(state.responses.get(id).ok_or_else(|| {
            ApiError::invalid(format!("Previous response with id '{id}' not found."))
                .param("previous_response_id")
                .code("previous_response_not_found")
        })?),
        None => None,
    };

    let (stream, _) = check_stream(root, false)?;
    let store = as_bool(root.get("store"), "store")?.unwrap_or(true);
    as_bool(root.get("background"), "background")?;
    let parallel_tool_calls =
        as_bool(root.get("parallel_tool_calls"), "parallel_tool_calls")?.unwrap_or(true);
    let temperature = as_decimal(root.get("temperature"), "temperature", 0.0, 2.0)?;
    let top_p = as_decimal(root.get("top_p"), "top_p", 0.0, 1.0)?;
    let max_output_tokens = as_int(
        root.get("max_output_tokens"),
        "max_output_tokens",
        MIN_OUTPUT_TOKENS,
        None,
    )?;
    as_int(root.get("max_tool_calls"), "max_tool_calls", 1, None)?;
    as_int(root.get("top_logprobs"), "top_logprobs", 0, Some(20))?;
    let instructions = as_str(root.get("instructions"), "instructions")?;
    let user = as_str(root.get("user"), "user")?;
    as_str(root.get("safety_identifier"), "safety_identifier")?;
    as_str(root.get("prompt_cache_key"), "prompt_cache_key")?;
    as_enum(root.get("service_tier"), "service_tier", &SERVICE_TIERS)?;
    let truncation =
        as_enum(root.get("truncation"), "truncation", &["auto", "disabled"])?.unwrap_or("disabled");
    check_metadata(root.get("metadata"))?;
    if let Some(include) = as_array(root.get("include"), "include")? {
        for (i, item) in include.iter().enumerate() {
            as_str(Some(item), &format!("include[{i}]"))?;
        }
    }
    let reasoning = match as_object(root.get("reasoning"), "reasoning")? {
        Some(r) => Reasoning {
            effort: as_enum(r.get("effort"), "reasoning.effort", &EFFORTS)?,
            summary: as_enum(
                r.get("summary"),
                "reasoning.summary",
                &["auto", "concise", "detailed"],
            )?,
        },
        None => Reasoning::default(),
    };
    let json = check_text(root.get("text"))?;
    let tools = check_tools(root.get("tools"))?;
    let choice = check_tool_choice(root.get("tool_choice"))?;

    let mut stats = TextStats::default();
    if let Some(instructions) = instructions {
        stats.add(instructions);
        stats.messages += 1;
    }
    let input = present(root.get("input"));
    if input.is_none() && previous.is_none() && present(root.get("prompt")).is_none() {
        return Err(missing("input"));
    }
    let last_is_user = check_input(input, &mut stats, previous.as_deref())?;
    if json == Some("json_object") && !stats.mentions_json {
        return Err(ApiError::invalid(
            "Response input messages must contain the word 'json' in some form to use \
             'text.format' of type 'json_object'.",
        )
        .param("input"));
    }
    let tool = pick_tool(&tools, choice, last_is_user).map_err(unknown_tool)?;
    let context = previous.as_ref().map_or(0, |p| p.context_tokens);

    Ok(Plan {
        model,
        stream,
        store,
        json: json.is_some(),
        tool,
        prompt_tokens: stats.prompt_tokens().saturating_add(context),
        max_output_tokens: max_output_tokens.and_then(|m| u64::try_from(m).ok()),
        echo: Echo {
            instructions,
            previous_response_id,
            parallel_tool_calls,
            reasoning,
            temperature: temperature.unwrap_or(1.0),
            top_p: top_p.unwrap_or(1.0),
            text: present(root.get("text")).unwrap_or(&*TEXT_FORMAT),
            tool_choice: present(root.get("tool_choice")).unwrap_or(&*AUTO),
            tools: present(root.get("tools")).unwrap_or(&*EMPTY_ARRAY),
            truncation,
            user,
            metadata: present(root.get("metadata")).unwrap_or(&*EMPTY_OBJECT),
        },
    })
}

/// `input`: a string (one user message) or a list of items. Checks roles, part types (the
/// Responses ones: `input_text`, not chat's `text`) and that every `function_call_output`
/// answers a call made in this input or by the previous response. Returns whether the input
/// ends with the user speaking.
fn check_input(
    input: Option<&Value>,
    stats: &mut TextStats,
    previous: Option<&Stored>,
) -> Result<bool, ApiError> {
    let items = match input {
        None => return Ok(false),
        Some(Value::String(text)) => {
            stats.add(text);
            stats.messages += 1;
            return Ok(true);
        }
        Some(Value::Array(items)) => items,
        Some(other) => return Err(invalid_type("input", "one of a string or array", other)),
    };
    let mut calls: Vec<&str> = Vec::new();
    let mut answers: Vec<&str> = Vec::new();
    let mut last_is_user = false;
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let item = as_object(Some(item), &at)?.ok_or_else(|| missing(&at))?;
        let type_param = format!("{at}.type");
        let field = |name: &str| required_str(item, &at, name);
        last_is_user = false;
        match as_str(item.get("type"), &type_param)? {
            None | Some("message") => {
                let role = field("role")?;
                if !INPUT_ROLES.contains(&role) {
                    return Err(invalid_value(&format!("{at}.role"), role, &INPUT_ROLES));
                }
                let content_param = format!("{at}.content");
                let content =
                    present(item.get("content")).ok_or_else(|| missing(&content_param))?;
                check_content(content, &content_param, stats)?;
                stats.messages += 1;
                last_is_user = role == "user";
            }
            Some("function_call") => {
                calls.push(field("call_id")?);
                field("name")?;
                stats.add(field("arguments")?);
                stats.messages += 1;
            }
            Some("function_call_output") => {
                answers.push(field("call_id")?);
                let output_param = format!("{at}.output");
                match present(item.get("output")) {
                    Some(Value::String(text)) => stats.add(text),
                    Some(Value::Array(_)) => {}
                    Some(other) => {
                        return Err(invalid_type(
                            &output_param,
                            "one of a string or array",
                            other,
                        ));
                    }
                    None => return Err(missing(&output_param)),
                }
                stats.messages += 1;
            }
            Some(other) if INPUT_ITEM_TYPES.contains(&other) => {}
            Some(other) => return Err(invalid_value(&type_param, other, &INPUT_ITEM_TYPES)),
        }
    }
    for id in answers {
        let known =
            calls.contains(&id) || previous.is_some_and(|p| p.call_ids.iter().any(|c| c == id));
        if !known {
            return Err(ApiError::invalid(format!(
                "No tool call found for function call output with call_id {id}."
            ))
            .param("input"));
        }
    }
    Ok(last_is_user)
}

/// A required string member `name` of the object at `at`.
fn required_str<'v>(
    item: &'v Map<String, Value>,
    at: &str,
    name: &str,
) -> Result<&'v str, ApiError> {
    let param = format!("{at}.{name}");
    as_str(item.get(name), &param)?.ok_or_else(|| missing(&param))
}

fn check_content(content: &Value, param: &str, stats: &mut TextStats) -> Result<(), ApiError> {
    let parts = match content {
        Value::String(text) => {
            stats.add(text);
            return Ok(());
        }
        Value::Array(parts) => parts,
        other => return Err(invalid_type(param, "one of a string or array", other)),
    };
    for (j, part) in parts.iter().enumerate() {
        let p = format!("{param}[{j}]");
        let part = as_object(Some(part), &p)?.ok_or_else(|| missing(&p))?;
        let type_param = format!("{p}.type");
        let ty = as_str(part.get("type"), &type_param)?.ok_or_else(|| missing(&type_param))?;
        if !INPUT_PART_TYPES.contains(&ty) {
            return Err(invalid_value(&type_param, ty, &INPUT_PART_TYPES));
        }
        if matches!(ty, "input_text" | "output_text") {
            let text = as_str(part.get("text"), &format!("{p}.text"))?
                .ok_or_else(|| missing(&format!("{p}.text")))?;
            stats.add(text);
        }
    }
    Ok(())
}

/// `text.format`; returns the structured-output type when the reply must be JSON.
fn check_text(text: Option<&Value>) -> Result<Option<&str>, ApiError> {
    let Some(text) = as_object(text, "text")? else {
        return Ok(None);
    };
    as_enum(text.get("verbosity"), "text.verbosity", &VERBOSITIES)?;
    let Some(format) = as_object(text.get("format"), "text.format")? else {
        return Ok(None);
    };
    let ty = as_enum(format.get("type"), "text.format.type", &FORMAT_TYPES)?
        .ok_or_else(|| missing("text.format.type"))?;
    if ty == "json_schema" {
        as_str(format.get("name"), "text.format.name")?
            .ok_or_else(|| missing("text.format.name"))?;
        as_object(format.get("schema"), "text.format.schema")?
            .ok_or_else(|| missing("text.format.schema"))?;
    }
    Ok((ty != "text").then_some(ty))
}

/// Responses tools are flat: `{type:"function", name, parameters}`. A chat-style nested
/// tool therefore fails on its missing `name`, as it does at OpenAI. Hosted tools (web
/// search, file search, MCP…) are accepted and never called.
fn check_tools(tools: Option<&Value>) -> Result<Vec<FnTool<'_>>, ApiError> {
    let mut out = Vec::new();
    for (p, tool) in tool_objects(tools)? {
        let ty = as_str(tool.get("type"), &format!("{p}.type"))?
            .ok_or_else(|| missing(&format!("{p}.type")))?;
        if ty != "function" {
            continue;
        }
        let name_param = format!("{p}.name");
        let name = as_str(tool.get("name"), &name_param)?.ok_or_else(|| missing(&name_param))?;
        check_function_name(name, &name_param)?;
        let parameters = tool.get("parameters");
        as_object(parameters, &format!("{p}.parameters"))?;
        out.push(FnTool { name, parameters });
    }
    Ok(out)
}

fn check_tool_choice(choice: Option<&Value>) -> Result<ToolChoice<'_>, ApiError> {
    match present(choice) {
        None => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" | "required" => Ok(ToolChoice::Auto),
            other => Err(invalid_value("tool_choice", other, &TOOL_CHOICES)),
        },
        Some(Value::Object(choice)) => {
            let ty = as_str(choice.get("type"), "tool_choice.type")?
                .ok_or_else(|| missing("tool_choice.type"))?;
            match ty {
                "function" => {
                    let name = as_str(choice.get("name"), "tool_choice.name")?
                        .ok_or_else(|| missing("tool_choice.name"))?;
                    Ok(ToolChoice::Named(name))
                }
                "allowed_tools" => Ok(ToolChoice::Auto),
                // A hosted tool was forced: the emulator answers in text.
                _ => Ok(ToolChoice::None),
            }
        }
        Some(other) => Err(invalid_type(
            "tool_choice",
            "one of a string or an object",
            other,
        )),
    }
}
