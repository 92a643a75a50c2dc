/*
 * Minimal TAP producer for the unit tests (meson test --suite unit).
 */
#ifndef CFS_TESTS_TAP_H
#define CFS_TESTS_TAP_H

#include <stdbool.h>

void tap_ok(bool cond, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tap_skip(const char *why);
/* Prints the plan (1..N) and returns the exit status (1 if any failed). */
int tap_done(void);

#define TAP_OK(cond, ...) tap_ok((cond), __VA_ARGS__)
#define TAP_EQ_INT(a, b, name)                                                 \
	do {                                                                   \
		long long a_ = (long long)(a), b_ = (long long)(b);            \
		tap_ok(a_ == b_, "%s", name);                                  \
		if (a_ != b_)                                                  \
			tap_diag("  got %lld, expected %lld (%s:%d)", a_, b_,  \
				 __FILE__, __LINE__);                          \
	} while (0)
#define TAP_EQ_STR(a, b, name)                                                 \
	do {                                                                   \
		const char *a_ = (a), *b_ = (b);                               \
		bool eq_ = a_ && b_ && strcmp(a_, b_) == 0;                    \
		tap_ok(eq_, "%s", name);                                       \
		if (!eq_)                                                      \
			tap_diag("  got \"%s\", expected \"%s\" (%s:%d)",      \
				 a_ ? a_ : "(null)", b_ ? b_ : "(null)",       \
				 __FILE__, __LINE__);                          \
	} while (0)

/* A fresh private directory for this test under CFS_TEST_TMP or /tmp. */
char *tap_tmpdir(const char *name);

#endif
