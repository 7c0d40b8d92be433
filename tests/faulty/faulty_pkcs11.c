/*
 * A PKCS#11 module for the tests: it forwards every call to a real module (SoftHSM) and, on
 * command, makes the token misbehave the way real tokens do: a replugged YubiKey or a restarted
 * YubiHSM connector closes every session; a removed device answers CKR_DEVICE_REMOVED; a busy
 * HSM hangs.
 *
 * FAULTY_PKCS11_MODULE   the real module to forward to
 * FAULTY_PKCS11_CONTROL  a file holding the current fault (read on every call; empty = none):
 *     close_all [NEXT]  close all sessions of the slot once, then behave (or turn to NEXT)
 *     removed           sessions, logins and signatures fail with CKR_DEVICE_REMOVED,
 *                       and no slot has a token
 *     session_invalid   signing fails with CKR_SESSION_HANDLE_INVALID
 *     session_invalid_once  the same, once
 *     not_logged_in     signing fails with CKR_USER_NOT_LOGGED_IN
 *     device_error      signing fails with CKR_DEVICE_ERROR
 *     pin_incorrect     every C_Login fails with CKR_PIN_INCORRECT
 *     hang MS           every C_Sign waits MS milliseconds first (in parallel; not the
 *                       call that only asks for the signature's length)
 *     slow MS           a slow device, like a YubiHSM 2: every C_Sign takes MS milliseconds
 *                       and the device makes one signature at a time, in the order asked
 *     final_try         C_GetTokenInfo reports CKF_USER_PIN_FINAL_TRY (one more wrong PIN locks)
 * FAULTY_PKCS11_LOG      if set, a file that gets one line per forwarded C_Login, C_OpenSession
 *                        and C_SignInit, so tests can count them
 *
 * Only the calls the agent makes are wrapped; the rest of the function list is the real one.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef CK_ULONG CK_SLOT_ID;
typedef CK_ULONG CK_SESSION_HANDLE;
typedef CK_ULONG CK_OBJECT_HANDLE;
typedef CK_ULONG CK_FLAGS;
typedef CK_ULONG CK_USER_TYPE;
typedef unsigned char CK_BYTE;
typedef unsigned char CK_BBOOL;
typedef void *CK_VOID_PTR;
typedef struct { CK_BYTE major, minor; } CK_VERSION;

#define CKR_OK 0x0UL
#define CKR_DEVICE_ERROR 0x30UL
#define CKR_DEVICE_REMOVED 0x32UL
#define CKR_PIN_INCORRECT 0xA0UL
#define CKR_SESSION_HANDLE_INVALID 0xB3UL
#define CKR_TOKEN_NOT_PRESENT 0xE0UL
#define CKR_USER_NOT_LOGGED_IN 0x101UL
#define CKR_GENERAL_ERROR 0x5UL
#define CKF_USER_PIN_FINAL_TRY 0x20000UL

/* The PKCS#11 2.40 function list: a version, then 68 function pointers in a fixed order. */
#define FUNCTIONS 68
typedef struct {
    CK_VERSION version;
    void *fn[FUNCTIONS];
} function_list;

enum {
    GET_SLOT_LIST = 4,
    GET_TOKEN_INFO = 6,
    OPEN_SESSION = 12,
    CLOSE_ALL_SESSIONS = 14,
    LOGIN = 18,
    SIGN_INIT = 42,
    SIGN = 43,
};

typedef CK_RV (*get_function_list_fn)(function_list **);
typedef CK_RV (*get_slot_list_fn)(CK_BBOOL, CK_SLOT_ID *, CK_ULONG *);
typedef CK_RV (*get_token_info_fn)(CK_SLOT_ID, void *);
typedef CK_RV (*open_session_fn)(CK_SLOT_ID, CK_FLAGS, CK_VOID_PTR, void *, CK_SESSION_HANDLE *);
typedef CK_RV (*close_all_fn)(CK_SLOT_ID);
typedef CK_RV (*login_fn)(CK_SESSION_HANDLE, CK_USER_TYPE, CK_BYTE *, CK_ULONG);
typedef CK_RV (*sign_init_fn)(CK_SESSION_HANDLE, void *, CK_OBJECT_HANDLE);
typedef CK_RV (*sign_fn)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *);

static function_list *real;
static function_list ours;
static CK_SLOT_ID last_slot;
static int removed_sessions_closed;

/* The slow device: one signature at a time, first come first served (a ticket lock). */
static pthread_mutex_t device = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t device_turn = PTHREAD_COND_INITIALIZER;
static unsigned long device_next, device_serving;

static void fault(char *out, size_t size) {
    out[0] = 0;
    const char *path = getenv("FAULTY_PKCS11_CONTROL");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f) {
        if (!fgets(out, (int)size, f)) out[0] = 0;
        fclose(f);
    }
    out[strcspn(out, "\r\n")] = 0;
    /* A removed token takes its sessions and the login with it, once, as it goes. */
    if (strcmp(out, "removed") == 0) {
        if (!removed_sessions_closed && real && last_slot) {
            ((close_all_fn)real->fn[CLOSE_ALL_SESSIONS])(last_slot);
        }
        removed_sessions_closed = 1;
    } else {
        removed_sessions_closed = 0;
    }
}

static void set_fault(const char *next) {
    const char *path = getenv("FAULTY_PKCS11_CONTROL");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f) return;
    fputs(next, f);
    fclose(f);
}

static void clear_fault(void) { set_fault(""); }

static int is(const char *current, const char *name) { return strcmp(current, name) == 0; }

static void note(const char *call) {
    const char *path = getenv("FAULTY_PKCS11_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f) return;
    fprintf(f, "%s\n", call);
    fclose(f);
}

static CK_RV get_slot_list(CK_BBOOL present, CK_SLOT_ID *slots, CK_ULONG *count) {
    char f[64];
    fault(f, sizeof f);
    if (present && is(f, "removed")) {
        *count = 0;
        return CKR_OK;
    }
    return ((get_slot_list_fn)real->fn[GET_SLOT_LIST])(present, slots, count);
}

static CK_RV get_token_info(CK_SLOT_ID slot, void *info) {
    char f[64];
    fault(f, sizeof f);
    if (is(f, "removed")) return CKR_TOKEN_NOT_PRESENT;
    CK_RV rv = ((get_token_info_fn)real->fn[GET_TOKEN_INFO])(slot, info);
    /* CK_TOKEN_INFO: label[32], manufacturerID[32], model[16], serialNumber[16], then flags. */
    if (rv == CKR_OK && is(f, "final_try")) *(CK_FLAGS *)((char *)info + 96) |= CKF_USER_PIN_FINAL_TRY;
    return rv;
}

static CK_RV open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, void *notify, CK_SESSION_HANDLE *out) {
    char f[64];
    fault(f, sizeof f);
    note("C_OpenSession");
    if (is(f, "removed")) return CKR_DEVICE_REMOVED;
    last_slot = slot;
    return ((open_session_fn)real->fn[OPEN_SESSION])(slot, flags, app, notify, out);
}

static CK_RV login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_BYTE *pin, CK_ULONG len) {
    char f[64];
    fault(f, sizeof f);
    note("C_Login");
    if (is(f, "removed")) return CKR_DEVICE_REMOVED;
    if (is(f, "pin_incorrect")) return CKR_PIN_INCORRECT;
    return ((login_fn)real->fn[LOGIN])(session, user, pin, len);
}

static CK_RV sign_init(CK_SESSION_HANDLE session, void *mechanism, CK_OBJECT_HANDLE key) {
    char f[64];
    fault(f, sizeof f);
    note("C_SignInit");
    if (strncmp(f, "close_all", 9) == 0) {
        /* What a replugged token or a restarted connector does: every session is gone, and
           with them the login. */
        set_fault(f[9] == ' ' ? f + 10 : "");
        ((close_all_fn)real->fn[CLOSE_ALL_SESSIONS])(last_slot);
        fault(f, sizeof f);
    }
    if (is(f, "removed")) return CKR_DEVICE_REMOVED;
    if (is(f, "session_invalid")) return CKR_SESSION_HANDLE_INVALID;
    if (is(f, "session_invalid_once")) {
        clear_fault();
        return CKR_SESSION_HANDLE_INVALID;
    }
    if (is(f, "not_logged_in")) return CKR_USER_NOT_LOGGED_IN;
    return ((sign_init_fn)real->fn[SIGN_INIT])(session, mechanism, key);
}

static CK_RV sign(CK_SESSION_HANDLE session, CK_BYTE *data, CK_ULONG len, CK_BYTE *sig, CK_ULONG *sig_len) {
    char f[64];
    fault(f, sizeof f);
    if (is(f, "device_error")) {
        /* A failed C_Sign ends the operation, as on a real token. */
        CK_BYTE scratch[1024];
        CK_ULONG scratch_len = sizeof scratch;
        ((sign_fn)real->fn[SIGN])(session, data, len, scratch, &scratch_len);
        return CKR_DEVICE_ERROR;
    }
    if (strncmp(f, "slow ", 5) == 0 && sig) {
        long ms = atol(f + 5);
        struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
        pthread_mutex_lock(&device);
        unsigned long ticket = device_next++;
        while (device_serving != ticket) pthread_cond_wait(&device_turn, &device);
        pthread_mutex_unlock(&device);
        nanosleep(&t, NULL);
        CK_RV rv = ((sign_fn)real->fn[SIGN])(session, data, len, sig, sig_len);
        pthread_mutex_lock(&device);
        device_serving++;
        pthread_cond_broadcast(&device_turn);
        pthread_mutex_unlock(&device);
        return rv;
    }
    if (strncmp(f, "hang ", 5) == 0 && sig) {
        long ms = atol(f + 5);
        struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&t, NULL);
    }
    return ((sign_fn)real->fn[SIGN])(session, data, len, sig, sig_len);
}

CK_RV C_GetFunctionList(function_list **out) {
    if (!real) {
        const char *path = getenv("FAULTY_PKCS11_MODULE");
        void *lib = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        get_function_list_fn get = lib ? (get_function_list_fn)dlsym(lib, "C_GetFunctionList") : NULL;
        if (!get || get(&real) != CKR_OK || !real) return CKR_GENERAL_ERROR;
        ours = *real;
        ours.version.major = 2;
        ours.version.minor = 40;
        ours.fn[GET_SLOT_LIST] = (void *)get_slot_list;
        ours.fn[GET_TOKEN_INFO] = (void *)get_token_info;
        ours.fn[OPEN_SESSION] = (void *)open_session;
        ours.fn[LOGIN] = (void *)login;
        ours.fn[SIGN_INIT] = (void *)sign_init;
        ours.fn[SIGN] = (void *)sign;
    }
    *out = &ours;
    return CKR_OK;
}
