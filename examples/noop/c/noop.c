/*
 * noop.c: the C twin of ../main.go, the no-op executor the benchmark (bench/cmd/benchall) runs.
 *
 * For every step request of executor protocol v1 it answers at once with a result whose
 * state is the request's state (for a map item, the item), as main.go does. It exists
 * because a Go process spends, per request, runtime work of its own (a blocking read of
 * stdin hands the thread back and forth with the scheduler; futex wake-ups, sysmon): with
 * 64 replicas that was ~30 µs of CPU per run, a sixth of a burn-down's CPU, none of it
 * agentserver's. Here a request costs a read and a write, and a burst of requests (an
 * executor of `concurrency` above 1 gets them without waiting) one read and one write:
 * every request a read brought is answered, in order, in one write.
 *
 * It copies the values of "id" and "state" (or "item") verbatim and does not validate the
 * rest of the line: the worker only sends well-formed JSON. A line that is not a JSON
 * object, or not a step request, is skipped, as main.go skips it.
 *
 *   cc -O2 -o /tmp/agentserver-noop-c examples/noop/c/noop.c
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

static const char *skip_space(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

/* p is at the opening quote; returns the position after the closing one, or NULL. */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

/* Returns the position after the JSON value at p, or NULL if it does not end on the line. */
static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') {
                if (!(p = skip_string(p, end))) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
            p++;
        }
        return NULL;
    }
    /* number, true, false, null */
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') p++;
    return p;
}

static int key_is(const char *k, const char *k_end, const char *name) {
    size_t n = strlen(name);
    return (size_t)(k_end - k) == n && memcmp(k, name, n) == 0;
}

static int write_all(const char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, buf, n);
        if (w <= 0) return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Answers the request on line [line, end) by appending its result to *out: 0, or -1 when out
 * of memory. A line that is not a step request is skipped. */
static int answer(const char *line, const char *end, char **out, size_t *out_len, size_t *out_cap) {
    const char *id = NULL, *id_end = NULL, *state = NULL, *state_end = NULL, *item = NULL, *item_end = NULL;
    int step = 0;
    const char *p = skip_space(line, end);
    if (p >= end || *p != '{') return 0;
    p = skip_space(p + 1, end);
    while (p < end && *p == '"') {
        const char *key = p + 1, *key_end = skip_string(p, end);
        if (!key_end) break;
        p = skip_space(key_end, end);
        if (p >= end || *p != ':') break;
        const char *v = skip_space(p + 1, end), *v_end = skip_value(v, end);
        if (!v_end) break;
        key_end--; /* at the closing quote */
        if (key_is(key, key_end, "id")) id = v, id_end = v_end;
        else if (key_is(key, key_end, "state")) state = v, state_end = v_end;
        else if (key_is(key, key_end, "item")) item = v, item_end = v_end;
        else if (key_is(key, key_end, "type")) step = v_end - v == 6 && memcmp(v, "\"step\"", 6) == 0;
        p = skip_space(v_end, end);
        if (p >= end || *p != ',') break;
        p = skip_space(p + 1, end);
    }
    if (!step || !id) return 0;
    if (item) state = item, state_end = item_end;
    if (!state || (state_end - state == 4 && memcmp(state, "null", 4) == 0)) state = "{}", state_end = state + 2;

    static const char head[] = "{\"type\":\"result\",\"id\":", mid[] = ",\"state\":";
    size_t id_len = (size_t)(id_end - id), state_len = (size_t)(state_end - state);
    size_t need = sizeof head + id_len + sizeof mid + state_len + 2;
    if (*out_len + need > *out_cap) {
        *out_cap = (*out_len + need) * 2;
        if (!(*out = realloc(*out, *out_cap))) return -1;
    }
    char *o_buf = *out;
    size_t o = *out_len;
    memcpy(o_buf + o, head, sizeof head - 1), o += sizeof head - 1;
    memcpy(o_buf + o, id, id_len), o += id_len;
    memcpy(o_buf + o, mid, sizeof mid - 1), o += sizeof mid - 1;
    memcpy(o_buf + o, state, state_len), o += state_len;
    o_buf[o++] = '}';
    o_buf[o++] = '\n';
    *out_len = o;
    return 0;
}

int main(void) {
    /* Reads what stdin has, answers every whole line in it, then writes the answers in one
     * write: a worker that sends several requests at once (an executor of concurrency above
     * 1) gets their answers together; one request at a time, it is a read and a write each. */
    size_t in_cap = 64 << 10, in_len = 0, out_len = 0, out_cap = 0;
    char *in = malloc(in_cap), *out = NULL;
    if (!in) return 1;
    for (;;) {
        if (in_len == in_cap) {
            in_cap *= 2;
            if (!(in = realloc(in, in_cap))) return 1;
        }
        ssize_t n = read(STDIN_FILENO, in + in_len, in_cap - in_len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        in_len += (size_t)n;
        char *start = in, *stop = in + in_len, *nl;
        while ((nl = memchr(start, '\n', (size_t)(stop - start))) != NULL) {
            if (answer(start, nl + 1, &out, &out_len, &out_cap) != 0) return 1;
            start = nl + 1;
        }
        in_len = (size_t)(stop - start);
        memmove(in, start, in_len);
        if (out_len > 0) {
            if (write_all(out, out_len) != 0) return 1;
            out_len = 0;
        }
    }
    /* A last line without a newline. */
    if (in_len > 0 && answer(in, in + in_len, &out, &out_len, &out_cap) == 0 && out_len > 0) write_all(out, out_len);
    return 0;
}
