#!/bin/sh
# A command function in POSIX shell: counts the words of the event's "text" field.
# Event on stdin as JSON, result on stdout as JSON; context in environment variables.
text=$(cat | sed -n 's/.*"text"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
words=$(printf '%s' "$text" | wc -w | tr -d ' ')
printf '{"words": %s, "function": "%s"}\n' "$words" "$AWS_LAMBDA_FUNCTION_NAME"
