// send(socketPath, message): one sd_notify datagram from this process.
//
// The datagram must leave from the agent's own process so its SCM_CREDENTIALS carry the main PID
// (NotifyAccess=main), and NOTIFY_SOCKET may name an abstract socket ("@name"), which nothing in
// Node 20 can address. Plain Node-API (no nan / node-addon-api) so the addon needs no npm
// dependency and builds against any Node >= 20 without recompiling per version.
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <node_api.h>

#define CHECK(env, call)                                                  \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      napi_throw_error((env), NULL, "sd_notify: Node-API call failed");  \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

static const char *errno_code(int err) {
  switch (err) {
    case ENOENT: return "ENOENT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EAGAIN: return "EAGAIN";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOTDIR: return "ENOTDIR";
    case ENOTSOCK: return "ENOTSOCK";
    case EPROTOTYPE: return "EPROTOTYPE";
    case EMSGSIZE: return "EMSGSIZE";
    case ENOBUFS: return "ENOBUFS";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EINVAL: return "EINVAL";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ELOOP: return "ELOOP";
    case EINTR: return "EINTR";
    default: return "EUNKNOWN";
  }
}

// Throws an Error shaped like Node's own system errors (code, errno, syscall, address) so callers
// can branch on err.code the same way they do for fs and net failures.
static void throw_errno(napi_env env, int err, const char *syscall, const char *address) {
  const char *code = errno_code(err);
  char text[512];
  snprintf(text, sizeof text, "%s %s %s: %s", syscall, code, address, strerror(err));

  napi_value msg, code_v, error, errno_v, syscall_v, address_v;
  if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_error(env, code_v, msg, &error) != napi_ok) {
    napi_throw_error(env, code, text);
    return;
  }
  // Node reports errno as a negative number (uv convention); keep that so it matches os.constants.
  if (napi_create_int32(env, -err, &errno_v) == napi_ok) napi_set_named_property(env, error, "errno", errno_v);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_v) == napi_ok)
    napi_set_named_property(env, error, "syscall", syscall_v);
  if (napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &address_v) == napi_ok)
    napi_set_named_property(env, error, "address", address_v);
  napi_throw(env, error);
}

// Reads a JS string argument into a fresh malloc'd buffer; NULL (with a pending exception) on failure.
static char *read_string(napi_env env, napi_value value, const char *what, size_t *out_len) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_string) {
    char text[128];
    snprintf(text, sizeof text, "sd_notify: %s must be a string", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", text);
    return NULL;
  }
  size_t len = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok) {
    napi_throw_error(env, NULL, "sd_notify: cannot read string argument");
    return NULL;
  }
  char *buf = malloc(len + 1);
  if (buf == NULL) {
    napi_throw_error(env, "ENOMEM", "sd_notify: out of memory");
    return NULL;
  }
  if (napi_get_value_string_utf8(env, value, buf, len + 1, &len) != napi_ok) {
    free(buf);
    napi_throw_error(env, NULL, "sd_notify: cannot read string argument");
    return NULL;
  }
  *out_len = len;
  return buf;
}

// Fills `addr` for a filesystem path ("/run/systemd/notify") or an abstract name ("@name").
// Returns the address length for sendto(), or 0 when the name does not fit in sun_path.
static socklen_t fill_address(struct sockaddr_un *addr, const char *path, size_t path_len) {
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path[0] == '@') {
    // The kernel takes the name as exactly the bytes given after the leading NUL; a trailing NUL
    // would become part of the name and miss the listener's socket.
    if (path_len > sizeof addr->sun_path) return 0;
    memcpy(addr->sun_path + 1, path + 1, path_len - 1);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
  }
  // Keep room for the terminating NUL so the kernel never reads past the name.
  if (path_len >= sizeof addr->sun_path) return 0;
  memcpy(addr->sun_path, path, path_len);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + 1);
}

static void throw_coded(napi_env env, const char *code, const char *text) {
  napi_value code_v, msg_v, error;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg_v) != napi_ok ||
      napi_create_error(env, code_v, msg_v, &error) != napi_ok) {
    napi_throw_error(env, code, text);
    return;
  }
  napi_throw(env, error);
}

// Returns 0, or -1 with a pending JS exception. Owns nothing: the caller frees path and msg.
static int send_datagram(napi_env env, const char *path, size_t path_len, const char *msg, size_t msg_len) {
  int abstract = path[0] == '@';
  // A NUL inside the string would silently shorten a filesystem path (or alter an abstract name).
  if (path_len == 0 || strlen(path) != path_len || (abstract && path_len == 1) || (!abstract && path[0] != '/')) {
    throw_coded(env, "ERR_INVALID_ARG_VALUE",
                "sd_notify: socketPath must be an absolute path or an abstract name starting with '@'");
    return -1;
  }

  struct sockaddr_un addr;
  socklen_t addr_len = fill_address(&addr, path, path_len);
  if (addr_len == 0) {
    char text[160];
    snprintf(text, sizeof text, "sd_notify: socketPath is %zu bytes, longer than sun_path (%zu bytes) allows",
             path_len, sizeof addr.sun_path);
    throw_coded(env, "ENAMETOOLONG", text);
    return -1;
  }

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, errno, "socket", path);
    return -1;
  }
  ssize_t sent;
  do {
    sent = sendto(fd, msg, msg_len, MSG_NOSIGNAL, (const struct sockaddr *)&addr, addr_len);
  } while (sent < 0 && errno == EINTR);
  int err = errno;
  close(fd);

  if (sent < 0) {
    throw_errno(env, err, "sendto", path);
    return -1;
  }
  if ((size_t)sent != msg_len) {
    // Datagrams are all-or-nothing; a short count would mean a truncated, misread notification.
    throw_errno(env, EMSGSIZE, "sendto", path);
    return -1;
  }
  return 0;
}

static napi_value send_notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "sd_notify: send(socketPath, message) takes two strings");
    return NULL;
  }

  size_t path_len = 0, msg_len = 0;
  char *path = read_string(env, argv[0], "socketPath", &path_len);
  if (path == NULL) return NULL;
  char *msg = read_string(env, argv[1], "message", &msg_len);
  if (msg != NULL) send_datagram(env, path, path_len, msg, msg_len);
  free(path);
  free(msg);
  return NULL;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_value fn;
  if (napi_create_function(env, "send", NAPI_AUTO_LENGTH, send_notify, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "send", fn) != napi_ok) {
    napi_throw_error(env, NULL, "sd_notify: cannot initialise the addon");
    return NULL;
  }
  return exports;
}
